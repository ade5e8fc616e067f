"""On-disk gradient store: per-checkpoint, sharded, resumable, checksummed records
(format 2: one plain ``.npy`` per field per shard; see ``gradient_store``)."""
from tracin_jax.store.gradient_store import (
    CORE_FIELDS,
    FORMAT_VERSION,
    STORE_DTYPES,
    CheckpointInfo,
    CorruptShardError,
    GradientStore,
    GradientStoreWriter,
    StoreFormatError,
    StoreMismatchError,
)

__all__ = [
    "CORE_FIELDS",
    "FORMAT_VERSION",
    "STORE_DTYPES",
    "CheckpointInfo",
    "CorruptShardError",
    "GradientStore",
    "GradientStoreWriter",
    "StoreFormatError",
    "StoreMismatchError",
]
