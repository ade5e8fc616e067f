"""Per-example word-embedding gradients (sharded over a device mesh) into a gradient store."""
from tracin_jax.grads.embedding_grads import (
    make_gradient_fn, make_single_device_gradient_fn, per_example_outputs)
from tracin_jax.grads.extract import compute_records, extract_gradients, parse_steps

__all__ = ["make_gradient_fn", "make_single_device_gradient_fn", "per_example_outputs",
           "compute_records", "extract_gradients", "parse_steps"]
