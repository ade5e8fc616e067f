"""The pipeline's stages: each consumes the artifacts of the one before and writes its own.

    run directory  --gradients-->  gradient stores  --rankings-->  rankings / score matrices
        --sweep-->  sweep manifest  (deletion.runner: results)  (deletion.report: tables)

- ``gradients``: a run's splits and their gradient stores (``tracin-jax grads``), the
  ``RunContext`` of a run directory.
- ``rankings``: top-k rankings, full score matrices and self-influence from two stores.
- ``sweep``: a sweep's inputs (rankings, LDS matrices, self-influence, fixing points)
  gathered from a run and its stores, then the pure plan (``deletion.plan``) and the cost
  estimate (``deletion.cost``) → ``manifest.json``.
- ``analyses``: the paper's analyses on a run (cancellation, mislabel clusters, no overlap).
- ``demo``, ``demo_deletion``: ``make demo`` end to end.

docs/design.md lists every artifact with its path and format. Lower layers
(``deletion``, ``methods``, ``grads``...) never import this package.
"""
