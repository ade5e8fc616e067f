"""Shared setup for the methods tests: a tiny model, a tiny corpus, real gradient stores.

Stores are written by the real gradient path (``extract_gradients``) for two
"checkpoints" (two parameter sets with learning rates 0.5 and 0.25), so every
method is tested on exactly what production reads.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from tracin_jax.data import TextDataset, WordTokenizer, encode_dataset
from tracin_jax.grads import extract_gradients
from tracin_jax.methods import RunContext, SplitData
from tracin_jax.models import BertClassifier, BertConfig, init_params
from tracin_jax.store import GradientStore

WORDS = [f"w{i:02d}" for i in range(30)]
MAX_LEN = 12
NUM_LABELS = 3
CHECKPOINTS = ((10, 0.5), (20, 0.25))


@dataclasses.dataclass
class World:
    model: object
    params: dict  # step -> params
    tokenizer: WordTokenizer
    train: SplitData
    test: SplitData
    context: RunContext
    stores: dict  # (split, k) -> GradientStore


def _texts(rng, n: int, name: str) -> TextDataset:
    p = 1.0 / np.arange(1, len(WORDS) + 1)
    p /= p.sum()
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, MAX_LEN - 1)), p=p)) for _ in range(n)]
    return TextDataset(texts=tuple(texts), text_pairs=None,
                       labels=rng.integers(0, NUM_LABELS, size=n).astype(np.int32),
                       ids=np.arange(100, 100 + n, dtype=np.int64) * 3,  # ids != positions
                       label_names=tuple(f"c{i}" for i in range(NUM_LABELS)), name=name)


def tiny_model(vocab_size: int, layers: int = 1):
    return BertClassifier(BertConfig(
        vocab_size=vocab_size, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=24, max_position_embeddings=16, num_labels=NUM_LABELS,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def make_world(root: Path, *, n_train: int = 40, n_test: int = 6, ks=(None, 4), seed: int = 0,
               shard_size: int = 16) -> World:
    rng = np.random.default_rng(seed)
    tokenizer = WordTokenizer(list(WordTokenizer.SPECIALS) + WORDS, max_length=MAX_LEN)
    train_texts, test_texts = _texts(rng, n_train, "train"), _texts(rng, n_test, "test")
    train_enc = encode_dataset(train_texts, tokenizer, MAX_LEN)
    test_enc = encode_dataset(test_texts, tokenizer, MAX_LEN)
    model = tiny_model(tokenizer.vocab_size)
    params = {}
    for i, (step, _) in enumerate(CHECKPOINTS):
        p = init_params(model, jax.random.key(seed + i), MAX_LEN)
        p["classifier"]["kernel"] = p["classifier"]["kernel"] * 20  # confident, varied predictions
        params[step] = jax.device_get(p)
    train, test = SplitData(train_texts, train_enc), SplitData(test_texts, test_enc)
    context = RunContext(model, params.__getitem__, tokenizer, splits={"train": train, "test": test})
    stores = {}
    for split, data in (("train", train), ("test", test)):
        for k in ks:
            stores[split, k] = extract_gradients(
                model, CHECKPOINTS, params.__getitem__, data.encoded, root / f"{split}_k{k}",
                fingerprint=data.texts.fingerprint(), split=split, model_info={"tiny": True},
                vocab_size=tokenizer.vocab_size, k=k, shard_size=shard_size, batch_size=8,
                progress=False)
    return World(model, params, tokenizer, train, test, context, stores)


def reopen(store) -> GradientStore:
    return GradientStore(store.directory)
