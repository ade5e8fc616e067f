"""Every configs/*.py loads, names only known sources / kinds / optimizers / methods, and
round-trips through to_json / from_json; the experiments' key values are pinned, so a
refactor of the configs (or of the helpers in tracin_jax/config.py) cannot silently change
an experiment. Nothing is trained or downloaded."""
from pathlib import Path

import pytest

from tracin_jax.config import apply_overrides, from_json, load_config, to_json

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.py"))

# SST-2 from TFDS glue/sst2; the fields stay None (the source's default) so local csv files
# with columns text,label work via --config.data.source=files --config.data.files.*=PATH.
SST2_DATA = {"data.source": "tfds", "data.name": "glue/sst2", "data.train_split": "train",
             "data.eval_split": "validation", "data.text_field": None, "data.label_field": None,
             "data.pair_field": None, "data.label_names": ("negative", "positive"),
             "data.files": {"train": None, "eval": None}, "data.columns": None,
             "data.encoding": "utf-8", "data.max_eval": None}
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
        **SST2_DATA, "data.max_train": 10000,
        "tokenizer.kind": "bert", "tokenizer.path": None, "tokenizer.max_length": 64,
        "model.kind": "bert", "model.hf_dir": "checkpoints/minilm",
        "train.optimizer": "adamw", "train.lr": 5e-5, "train.weight_decay": 0.0,
        "train.schedule": "linear", "train.warmup_steps": 30, "train.epochs": 1,
        "train.batch_size": 32, "train.checkpoint_every_epochs": 0, "train.checkpoint_every_steps": 100,
    },
    "sst2_bert_tiny": {
        **SST2_DATA, "data.max_train": 5000,
        "tokenizer.kind": "bert", "tokenizer.path": "checkpoints/minilm", "tokenizer.max_length": 48,
        "model.kind": "bert", "model.hf_dir": None, "model.hidden_size": 128,
        "model.num_hidden_layers": 2, "model.num_attention_heads": 2, "model.intermediate_size": 512,
        "model.max_position_embeddings": 64, "model.hidden_dropout_prob": 0.1,
        "model.attention_probs_dropout_prob": 0.1,
        "train.optimizer": "adamw", "train.lr": 5e-4, "train.weight_decay": 0.01,
        "train.schedule": "linear", "train.warmup_steps": 50, "train.epochs": 3,
        "train.checkpoint_every_epochs": 1, "test_points.per_class": 5,
    },
    "sst2_bert_word": {
        **SST2_DATA, "data.max_train": 5000,
        "tokenizer.kind": "word", "tokenizer.path": None, "tokenizer.vocab_size": 5000,
        "tokenizer.min_freq": 1, "tokenizer.max_length": 48,
        "model.kind": "bert", "model.hf_dir": None, "model.vocab_size": None, "model.hidden_size": 128,
        "model.num_hidden_layers": 2, "model.num_attention_heads": 2, "model.intermediate_size": 512,
        "model.max_position_embeddings": 64, "model.hidden_dropout_prob": 0.1,
        "model.attention_probs_dropout_prob": 0.1,
        "train.optimizer": "adamw", "train.lr": 5e-4, "train.weight_decay": 0.01,
        "train.schedule": "linear", "train.warmup_steps": 50, "train.epochs": 3, "train.batch_size": 32,
        "train.checkpoint_every_epochs": 1, "test_points.per_class": 5,
    },
    "sst2_cnn": {
        **SST2_DATA, "data.max_train": 5000,
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
    assert {"demo", "sst2_minilm", "sst2_bert_word", "toxicity_bert_tiny"} <= {p.stem for p in CONFIG_FILES}
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
    if cfg.data.source not in ("synthetic", "tfds"):
        files = {k for k, v in cfg.data.files.items() if v is not None}
        assert {cfg.data.train_split, "train"} & files and {cfg.data.eval_split, "eval"} & files
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
        if name != "random":  # the control (stages/rankings.py), not a registry method
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


def _strings(node, prefix=""):
    for key, value in node.items():
        if hasattr(value, "items"):
            yield from _strings(value, f"{prefix}{key}.")
        elif isinstance(value, str):
            yield f"{prefix}{key}", value
        elif isinstance(value, tuple):
            yield from ((f"{prefix}{key}", v) for v in value if isinstance(v, str))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_config_paths_stay_inside_the_repository(path, configs):
    """A user's clone has only the repository: no config value may point outside it."""
    outside = {key: value for key, value in _strings(configs[path.stem].to_dict())
               if value.startswith(("/", "~")) or ".." in Path(value).parts}
    assert not outside, f"{path.stem}: {outside}"


@pytest.mark.parametrize("name", sorted(n for n in PINNED if n.startswith("sst2_")))
def test_sst2_configs_read_local_csv_files_by_override(name, tmp_path):
    """--config.data.source=files --config.data.files.train/eval=PATH: csv columns text,label."""
    from tracin_jax.data import load_splits

    train, dev = tmp_path / "train.csv", tmp_path / "dev.csv"
    train.write_text("text,label\na gripping film,1\ndull and long,0\nfine work,1\n", encoding="utf-8")
    dev.write_text("text,label\nnot good,0\ngreat,1\n", encoding="utf-8")
    cfg = apply_overrides(load_config(CONFIG_DIR / f"{name}.py"),
                          ["--config.data.source=files", f"--config.data.files.train={train}",
                           f"--config.data.files.eval={dev}"])
    splits = load_splits(cfg.data)
    assert splits["train"].texts == ("a gripping film", "dull and long", "fine work")
    assert list(splits["train"].labels) == [1, 0, 1] and list(splits["eval"].labels) == [0, 1]
    assert splits["eval"].label_names == ("negative", "positive")
