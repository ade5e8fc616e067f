"""tracin_jax: which training examples drove a language model's prediction (TracIn-WE).

The command line is ``tracin-jax`` (``tracin_jax.cli``); in Python, ``tracin_jax.influence``
scores a Flax model's checkpoints in memory (``tracin_jax.stages.memory``), and the stage
functions of ``tracin_jax.stages`` do what each command does. Attributes are imported on
first use, so ``import tracin_jax`` (and ``tracin-jax --help``) does not load JAX.
"""
from __future__ import annotations

__version__ = "0.2.0"


def __getattr__(name: str):
    if name == "influence":
        from tracin_jax.stages.memory import influence
        return influence
    if name == "import_params":
        from tracin_jax.stages.imports import import_params
        return import_params
    raise AttributeError(f"module 'tracin_jax' has no attribute {name!r}")
