"""Every configs/*.py loads, names only known sources / kinds / optimizers / methods, and
round-trips through to_json / from_json; the experiments' key values are pinned, so a
refactor of the configs (or of the helpers in tracin_jax/config.py) cannot silently change
an experiment. Nothing is trained or downloaded."""
from pathlib import Path

import pytest

from tracin_jax.config import from_json, load_config, to_json

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.py"))

SST2_FILES = {"train": "../shared/data/sst2/train.csv", "validation": "../shared/data/sst2/dev.csv"}
BERT_SMALL = "checkpoints/bert_uncased_L-2_H-128_A-2"
TOXICITY_DATA = {"data.source": "tfds", "data.name": "wikipedia_toxicity_subtypes",
                 "data.train_split": "train", "data.eval_split": "validation",
                 "data.text_field": "text", "data.label_field": "toxicity",
                 "data.max_train": 50000, "data.max_eval": 20000}
AGNEWS_DATA = {"data.source": "tfds", "data.name": "ag_news_subset", "data.train_split": "train",
               "data.eval_split": "test", "data.text_field": "description", "data.label_field": "label",
               "data.max_train": 50000, "data.max_eval": 20000}
PAPER_SGD = {"train.optimizer": "sgd", "train.momentum": 0.9, "train.schedule": "constant",
             "train.weight_decay": 0.0, "train.batch_size": 32}

# config name -> {dotted key: value}
PINNED = {
    "sst2_minilm": {
        "data.source": "csv", "data.name": "sst2", "data.files": SST2_FILES,
        "data.train_split": "train", "data.eval_split": "validation",
        "data.label_names": ("negative", "positive"), "data.max_train": 10000, "data.max_eval": None,
        "tokenizer.kind": "bert", "tokenizer.path": None, "tokenizer.max_length": 64,
        "model.kind": "bert", "model.hf_dir": "checkpoints/minilm",
        "train.optimizer": "adamw", "train.lr": 5e-5, "train.weight_decay": 0.0,
        "train.schedule": "linear", "train.warmup_steps": 30, "train.epochs": 1,
        "train.batch_size": 32, "train.checkpoint_every_epochs": 0, "train.checkpoint_every_steps": 100,
    },
    "sst2_bert_tiny": {
        "data.source": "csv", "data.name": "sst2", "data.files": SST2_FILES, "data.max_train": 5000,
        "tokenizer.kind": "bert", "tokenizer.path": "checkpoints/minilm", "tokenizer.max_length": 48,
        "model.kind": "bert", "model.hf_dir": None, "model.hidden_size": 128,
        "model.num_hidden_layers": 2, "model.num_attention_heads": 2, "model.intermediate_size": 512,
        "model.max_position_embeddings": 64, "model.hidden_dropout_prob": 0.1,
        "model.attention_probs_dropout_prob": 0.1,
        "train.optimizer": "adamw", "train.lr": 5e-4, "train.weight_decay": 0.01,
        "train.schedule": "linear", "train.warmup_steps": 50, "train.epochs": 3,
        "train.checkpoint_every_epochs": 1, "test_points.per_class": 5,
    },
    "sst2_cnn": {
        "data.source": "csv", "data.name": "sst2", "data.files": SST2_FILES, "data.max_train": 5000,
        "tokenizer.kind": "word", "tokenizer.vocab_size": 10000, "tokenizer.min_freq": 1,
        "tokenizer.max_length": 48,
        "model.kind": "cnn", "model.embed_dim": 128, "model.filters": 10, "model.kernel_sizes": (5, 5, 1),
        "model.dropout_rate": 0.0,
        "train.optimizer": "adamw", "train.lr": 1e-3, "train.schedule": "constant", "train.epochs": 4,
        "train.checkpoint_every_epochs": 1,
    },
    "toxicity_bert_tiny": {
        **TOXICITY_DATA, **PAPER_SGD, "tokenizer.kind": "bert", "tokenizer.max_length": 128,
        "model.kind": "bert", "model.hf_dir": BERT_SMALL, "model.pad_token_id": 0,
        "train.lr": 2e-4, "train.epochs": 20, "train.checkpoint_every_epochs": 4,
    },
    "toxicity_roberta_base": {
        **TOXICITY_DATA, **PAPER_SGD, "tokenizer.kind": "roberta",
        "model.kind": "roberta", "model.hf_dir": "checkpoints/roberta-base", "model.pad_token_id": 1,
        "train.lr": 2e-4, "train.epochs": 20, "train.checkpoint_every_epochs": 4,
    },
    "nooverlap_toxicity_bert_tiny": {
        **TOXICITY_DATA, **PAPER_SGD, "model.kind": "bert", "model.hf_dir": BERT_SMALL,
        "train.lr": 2e-4, "train.epochs": 20, "train.freeze_word_embeddings": True, "grads.k": 0,
        "nooverlap.num_candidates": 5000, "test_points.per_class": 20,
        "sweep.k_grid": tuple(range(10, 101, 10)), "sweep.seeds": tuple(range(10)),
        "sweep.mislabel.enabled": False,
    },
    "agnews_bert_tiny": {
        **AGNEWS_DATA, **PAPER_SGD, "tokenizer.kind": "bert", "model.kind": "bert",
        "model.hf_dir": BERT_SMALL, "train.lr": 2e-2, "train.epochs": 10,
        "train.checkpoint_every_epochs": 2,
    },
    "agnews_cnn": {
        **AGNEWS_DATA, **PAPER_SGD, "tokenizer.kind": "word", "tokenizer.vocab_size": 25000,
        "tokenizer.min_freq": 2, "model.kind": "cnn", "model.embed_dim": 128, "model.filters": 128,
        "model.kernel_sizes": (5, 5, 1), "model.dropout_rate": 0.0,
        "train.lr": 2e-2, "train.epochs": 10, "train.checkpoint_every_epochs": 2,
    },
    "mnli_bert_base": {
        "data.source": "tfds", "data.name": "glue/mnli", "data.train_split": "train",
        "data.eval_split": "validation_matched", "data.text_field": "premise",
        "data.pair_field": "hypothesis", "data.label_field": "label",
        "data.max_train": None, "data.max_eval": None,
        **PAPER_SGD, "tokenizer.kind": "bert", "model.kind": "bert",
        "model.hf_dir": "checkpoints/bert-base-uncased",
        "train.lr": 2e-3, "train.epochs": 3, "train.batch_size": 64, "train.checkpoint_every_epochs": 1,
    },
}


def _get(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node.to_dict() if hasattr(node, "to_dict") else node


@pytest.fixture(scope="module")
def configs():
    return {path.stem: load_config(path) for path in CONFIG_FILES}


def test_config_dir_is_found():
    assert {"demo", "sst2_minilm", "toxicity_bert_tiny"} <= {p.stem for p in CONFIG_FILES}
    assert set(PINNED) <= {p.stem for p in CONFIG_FILES}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_config_is_valid(path, configs):
    from tracin_jax.data.sources import SOURCES
    from tracin_jax.data.tokenize import KINDS as TOKENIZER_KINDS
    from tracin_jax.methods import get_method
    from tracin_jax.models import build_model
    from tracin_jax.train.trainer import make_optimizer, make_schedule

    cfg = configs[path.stem]
    assert cfg.name == path.stem
    assert cfg.data.source in SOURCES
    if cfg.data.source in ("csv", "tsv", "jsonl"):
        assert {cfg.data.train_split, cfg.data.eval_split} <= set(cfg.data.files)
    assert cfg.tokenizer.kind in TOKENIZER_KINDS
    # The library's own builders reject unknown optimizers / schedules / model kinds.
    make_optimizer(cfg.train, make_schedule(cfg.train, total_steps=100), params={})
    if not cfg.model.hf_dir or (Path(cfg.model.hf_dir) / "config.json").is_file():
        # As training fills them in from the data and tokenizer; a module description only,
        # no parameters are initialised.
        model_cfg = cfg.model.copy_and_resolve_references()
        model_cfg.num_labels = 2
        model_cfg.vocab_size = model_cfg.vocab_size or cfg.tokenizer.vocab_size
        build_model(model_cfg)
    else:
        assert cfg.model.kind in ("bert", "roberta")
    for name in cfg.sweep.methods:
        get_method(name)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_config_json_round_trip(path, configs):
    cfg = configs[path.stem]
    text = to_json(cfg)
    again = from_json(text)
    assert to_json(again) == text
    assert again.name == cfg.name


@pytest.mark.parametrize("name", sorted(PINNED))
def test_pinned_values(name, configs):
    cfg = configs[name]
    wrong = {key: (_get(cfg, key), want) for key, want in PINNED[name].items() if _get(cfg, key) != want}
    assert not wrong, f"{name}: (got, pinned) {wrong}"
