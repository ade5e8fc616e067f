"""Case-deletion evaluation (SPEC "Case-deletion evaluation"; paper sec. 2.2, 5, appendices F, L).

    plan   (plan.py, sweep.py)   rankings -> manifest of retraining jobs with stable ids
    run    (runner.py)           a shard's jobs, R retrainings per vmapped program (replicas.py)
    report (report.py)           DEL±(k), AUC-DEL± ± bootstrap std, LDS, mislabel detection,
                                 targeted fixing; Table 4 (Markdown/CSV), Figures 1-2 (PNG)
"""
from tracin_jax.deletion.metrics import (auc_del, bootstrap_auc_std, deletion_values,
                                         linear_datamodeling_score, mislabel_detection, spearman)
from tracin_jax.deletion.plan import (JobSet, job_id, lds_keep_mask, load_manifest, plan_sweep,
                                      training_fingerprint)
from tracin_jax.deletion.rankings import Rankings, compute_rankings, load_rankings
from tracin_jax.deletion.replicas import (ReplicaRun, ReplicaSpec, ReplicaTrainer, choose_num_replicas,
                                          initial_params)
from tracin_jax.deletion.report import sweep_report
from tracin_jax.deletion.runner import resolve_shard, run_sweep, shard_jobs
from tracin_jax.deletion.sweep import plan_from_run

__all__ = [
    "JobSet", "Rankings", "ReplicaRun", "ReplicaSpec", "ReplicaTrainer", "auc_del",
    "bootstrap_auc_std", "choose_num_replicas", "compute_rankings", "deletion_values",
    "initial_params", "job_id", "lds_keep_mask", "linear_datamodeling_score", "load_manifest",
    "load_rankings", "mislabel_detection", "plan_from_run", "plan_sweep", "resolve_shard",
    "run_sweep", "shard_jobs", "spearman", "sweep_report", "training_fingerprint",
]
