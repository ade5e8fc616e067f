"""On-disk gradient store: per-checkpoint, sharded, resumable, checksummed records."""
from tracin_jax.store.gradient_store import (
    CORE_FIELDS,
    FORMAT_VERSION,
    CheckpointInfo,
    CorruptShardError,
    GradientStore,
    GradientStoreWriter,
    StoreMismatchError,
)

__all__ = [
    "CORE_FIELDS",
    "FORMAT_VERSION",
    "CheckpointInfo",
    "CorruptShardError",
    "GradientStore",
    "GradientStoreWriter",
    "StoreMismatchError",
]
