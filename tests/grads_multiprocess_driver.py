"""One process of the 2-process job launched by tests/test_grads_multiprocess.py.

Usage: ``python grads_multiprocess_driver.py REPORT.json grads --run RUN ... --out STORE``

Runs the real ``tracin-jax grads`` command (``cli.main``), which calls
``mesh.initialize_distributed()`` from the environment set by the test
(``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``). The only
instrumentation is a wrapper around ``GradientStoreWriter.write_shard`` that records
which (checkpoint, shard) this process wrote. Afterwards it also runs the gradient
function once on the *global* mesh (devices of both processes), each process feeding
its own rows (``shard_batch``) and reading its own rows back (``local_rows``), and
compares with the unsharded function on the same rows. Everything observed goes to
REPORT.json for the parent test to check.
"""
import json
import sys

import numpy as np


def _global_mesh_check(run_dir: str) -> dict:
    import jax

    from tracin_jax import mesh as mesh_lib
    from tracin_jax.grads import make_gradient_fn, make_single_device_gradient_fn
    from tracin_jax.grads.embedding_grads import BATCH_FIELDS
    from tracin_jax.train import CheckpointStore, load_run

    setup = load_run(run_dir)
    ckpts = CheckpointStore(f"{run_dir}/checkpoints")
    params = ckpts.restore_params(ckpts.latest_step())
    ckpts.close()
    mesh = mesh_lib.make_mesh()  # every device of every process
    rows_per_process = 2 * len(jax.local_devices())
    start = jax.process_index() * rows_per_process
    rows = np.arange(start, start + rows_per_process)
    batch = {f: np.asarray(getattr(setup.train, f))[rows] for f in BATCH_FIELDS}
    out = make_gradient_fn(setup.model, mesh, k=None)(mesh_lib.replicate(params, mesh),
                                                      mesh_lib.shard_batch(batch, mesh))
    local = {key: mesh_lib.local_rows(value) for key, value in out.items()}
    ref = jax.device_get(make_single_device_gradient_fn(setup.model, k=None)(params, batch))
    return {
        "mesh_size": int(mesh.size),
        "global_rows": int(out["loss"].shape[0]),
        "fully_addressable": bool(out["loss"].is_fully_addressable),
        "max_abs_diff": {key: float(np.abs(local[key].astype(np.float64) - ref[key]).max())
                         for key in ref},
        "rows_equal": {key: local[key].shape == ref[key].shape for key in ref},
    }


def main(argv: list[str]) -> int:
    report_path, cli_args = argv[0], argv[1:]
    from tracin_jax.store import GradientStoreWriter

    writes: list[list[int]] = []
    real_write = GradientStoreWriter.write_shard

    def recording_write(self, step, shard_index, records):
        writes.append([int(step), int(shard_index)])
        return real_write(self, step, shard_index, records)

    GradientStoreWriter.write_shard = recording_write
    from tracin_jax import cli

    rc = cli.main(cli_args)
    import jax

    report = {"rc": rc, "process_index": jax.process_index(), "process_count": jax.process_count(),
              "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
              "writes": writes}
    report["global_mesh"] = _global_mesh_check(cli_args[cli_args.index("--run") + 1])
    with open(report_path, "w") as f:
        json.dump(report, f)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
