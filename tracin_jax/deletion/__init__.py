"""Case-deletion evaluation (paper sec. 2.2, 5, appendices F, L; docs/method.md).

Consumes rankings (``tracin_jax.rankings``), the run's data and a trainer; never extracts
gradients or scores itself (that is ``tracin_jax.stages``).

    plan     (plan.py)       rankings -> manifest of retraining jobs with stable ids (pure)
    cost     (cost.py)       replica memory and step times on this machine -> the estimate
    run      (runner.py)     a shard's jobs, R retrainings per program (replicas.py, schedule.py)
    report   (report.py)     DEL±(k), AUC-DEL± with intervals, LDS, mislabel detection,
                             targeted fixing; Table 4 (Markdown/CSV), Figures 1-2 (PNG)
"""
from tracin_jax.deletion.cost import choose_num_replicas, estimate_cost
from tracin_jax.deletion.metrics import (auc_del, bootstrap_auc_std, deletion_values,
                                         linear_datamodeling_score, mislabel_detection, spearman)
from tracin_jax.deletion.plan import (JobSet, job_id, lds_keep_mask, load_manifest, plan_sweep,
                                      training_fingerprint)
from tracin_jax.deletion.replicas import ReplicaRun, ReplicaTrainer, initial_params
from tracin_jax.deletion.report import sweep_report
from tracin_jax.deletion.runner import resolve_shard, run_sweep, shard_jobs
from tracin_jax.deletion.schedule import ReplicaSpec

__all__ = [
    "JobSet", "ReplicaRun", "ReplicaSpec", "ReplicaTrainer", "auc_del", "bootstrap_auc_std",
    "choose_num_replicas", "deletion_values", "estimate_cost", "initial_params", "job_id",
    "lds_keep_mask", "linear_datamodeling_score", "load_manifest", "mislabel_detection",
    "plan_sweep", "resolve_shard", "run_sweep", "shard_jobs", "spearman", "sweep_report",
    "training_fingerprint",
]
