"""Data: text sources → `TextDataset` → tokenizer → `EncodedDataset` → fixed-shape batches.

Sources: synthetic, TFDS, local csv / tsv / jsonl / parquet files (`sources`, `files`),
text or pre-tokenised rows."""
from tracin_jax.data.batching import (batch_order, batch_padded_length, check_right_padded, epoch_permutation,
                                      iterate_batches, num_batches, sequence_lengths)
from tracin_jax.data.dataset import TextDataset, select_test_points, subsample_indices
from tracin_jax.data.files import EXTENSIONS, FORMATS, format_for, read_table
from tracin_jax.data.sources import SOURCES, default_data_config, load_file, load_splits
from tracin_jax.data.synthetic import SyntheticCorpus, default_synthetic_config, make_synthetic
from tracin_jax.data.tokenize import (
    Encoded,
    EncodedDataset,
    HFTokenizer,
    IdsTokenizer,
    WordTokenizer,
    default_tokenizer_config,
    encode_dataset,
    load_tokenizer,
    pack_token_ids,
)

__all__ = [
    "EXTENSIONS",
    "FORMATS",
    "SOURCES",
    "Encoded",
    "EncodedDataset",
    "HFTokenizer",
    "IdsTokenizer",
    "SyntheticCorpus",
    "TextDataset",
    "WordTokenizer",
    "batch_order",
    "batch_padded_length",
    "check_right_padded",
    "default_data_config",
    "default_synthetic_config",
    "default_tokenizer_config",
    "encode_dataset",
    "epoch_permutation",
    "format_for",
    "iterate_batches",
    "load_file",
    "load_splits",
    "load_tokenizer",
    "make_synthetic",
    "num_batches",
    "pack_token_ids",
    "read_table",
    "select_test_points",
    "sequence_lengths",
    "subsample_indices",
]
