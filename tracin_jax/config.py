"""Experiment configuration: one ``ml_collections.ConfigDict`` per run.

``configs/NAME.py`` files define ``get_config()`` returning ``base_config()`` with
overrides, the blocks several configs share set by the ``use_*`` helpers below (a
dataset, a model, the paper's optimizer). Every field can be overridden on the command
line as ``--config.train.lr=1e-3`` (see :func:`apply_overrides`).
"""
from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import ml_collections
from absl import flags as absl_flags
from ml_collections.config_flags import config_path
from ml_collections.config_flags.tuple_parser import TupleParser

from tracin_jax.errors import ConfigError


def base_config() -> ml_collections.ConfigDict:
    from tracin_jax.data import default_data_config

    cfg = ml_collections.ConfigDict()
    cfg.name = "run"
    cfg.seed = 0
    cfg.data = default_data_config()

    cfg.tokenizer = ml_collections.ConfigDict()
    cfg.tokenizer.kind = "word"  # 'bert' | 'roberta' | 'word'
    cfg.tokenizer.path = ml_collections.FieldReference(None, field_type=str)
    cfg.tokenizer.lowercase = True
    cfg.tokenizer.max_length = 128  # docs/method.md "Paper settings": max sequence length 128
    cfg.tokenizer.vocab_size = 5000
    cfg.tokenizer.min_freq = 1

    cfg.model = ml_collections.ConfigDict()
    cfg.model.kind = "bert"  # 'bert' | 'roberta' | 'cnn'
    cfg.model.hf_dir = ml_collections.FieldReference(None, field_type=str)
    cfg.model.vocab_size = ml_collections.FieldReference(None, field_type=int)
    cfg.model.num_labels = ml_collections.FieldReference(None, field_type=int)
    cfg.model.hidden_size = 128
    cfg.model.num_hidden_layers = 2
    cfg.model.num_attention_heads = 2
    cfg.model.intermediate_size = 512
    cfg.model.hidden_act = "gelu"
    cfg.model.max_position_embeddings = 512
    cfg.model.type_vocab_size = 2
    cfg.model.hidden_dropout_prob = 0.1
    cfg.model.attention_probs_dropout_prob = 0.1
    cfg.model.layer_norm_eps = 1e-12
    cfg.model.pad_token_id = 0
    cfg.model.dtype = "float32"
    # CNN (paper sec. 3.2): embedding 128, conv1d k=5 x2, conv1d k=1, max pool, dense.
    cfg.model.embed_dim = 128
    cfg.model.filters = 128
    cfg.model.kernel_sizes = (5, 5, 1)
    cfg.model.dropout_rate = 0.0

    cfg.train = ml_collections.ConfigDict()
    cfg.train.optimizer = "sgd"  # 'sgd' (momentum, the paper's) | 'adamw'
    cfg.train.lr = 2e-4
    cfg.train.momentum = 0.9  # paper sec. 5: SGD with momentum 0.9
    cfg.train.weight_decay = 0.0
    cfg.train.schedule = "constant"  # 'constant' | 'linear' | 'cosine'
    cfg.train.warmup_steps = 0
    cfg.train.epochs = 1
    cfg.train.max_steps = ml_collections.FieldReference(None, field_type=int)
    cfg.train.batch_size = 32
    cfg.train.eval_batch_size = 64
    # Short texts: sort megabatches of G batches by length (Hugging Face's group_by_length;
    # changes the data order) and pad each batch only to its longest text, rounded up to
    # a multiple of m (same outputs). 0 = off: shuffled batches padded to max_length.
    cfg.train.group_by_length = 0  # G, e.g. 50
    cfg.train.pad_to_multiple = 0  # m, e.g. 8
    cfg.train.grad_clip_norm = ml_collections.FieldReference(None, field_type=float)
    cfg.train.freeze_word_embeddings = False  # no-overlap experiment (docs/method.md)
    # True: a NaN/inf loss, eval metric or parameter is logged, not fatal (checkpoints may then
    # hold NaN, which gradient extraction refuses). False: training stops at the first one.
    cfg.train.allow_nonfinite = False
    cfg.train.checkpoint_every_epochs = 1
    cfg.train.checkpoint_every_steps = 0
    cfg.train.checkpoint_steps = ()
    cfg.train.log_every_steps = 50
    cfg.train.num_devices = ml_collections.FieldReference(None, field_type=int)

    # Test points: balanced per class from the eval split (paper: 20 per class on
    # toxicity, 25 on AG News, 10 on MNLI).
    cfg.test_points = ml_collections.ConfigDict()
    cfg.test_points.per_class = 5
    cfg.test_points.seed = 0

    cfg.grads = ml_collections.ConfigDict()
    cfg.grads.k = 10  # docs/method.md, eq. 5: top-10 positions by gradient norm
    cfg.grads.topk_by = "position"
    # Storage dtype of the per-token vectors (scores are always summed in float32). "auto":
    # bfloat16 for top-k stores (half the bytes and read time; 99.6% of float32's top-100
    # proponents kept, tools/bench_kernel.py --store-dtype bfloat16), float32 for exact
    # stores (k = 0: exact vectors, the dense score matrices and pair explanations of
    # tracin_we). Or "float32" / "bfloat16" / "float16" for every store.
    cfg.grads.dtype = "auto"
    cfg.grads.batch_size = 32
    cfg.grads.shard_size = 1024
    cfg.grads.mode = "vmap"  # 'vmap' (vmap of per-example grad) | 'sum' (grad of summed loss)
    # Trimmed batches: each store shard is computed longest text first, every batch cut to its
    # longest text rounded up to this multiple (records unchanged up to float rounding, in
    # dataset order). None: automatic (max_length / 4 rounded up to a multiple of 8: at most
    # 4 batch widths, each compiled once); 0: every batch at tokenizer.max_length.
    cfg.grads.pad_to_multiple = ml_collections.FieldReference(None, field_type=int)

    # Case-deletion sweeps (docs/method.md "Case-deletion evaluation"; tracin_jax/deletion).
    cfg.sweep = ml_collections.ConfigDict()
    # 'random' (remove k random training examples) is the reference every method is read
    # against: DEL of one sweep carries its no-removal baselines' retraining noise, shared by
    # all its DEL; the paired difference method - random cancels it (docs/method.md).
    cfg.sweep.methods = ("tracin_we_topk", "tracin_last", "random")
    cfg.sweep.k_grid = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100)  # paper sec. 5, toxicity / AG News
    cfg.sweep.signs = ("+", "-")  # '+': remove the top-k proponents, '-': the top-k opponents
    cfg.sweep.seeds = tuple(range(10))  # paper sec. 5: 10 retrains per k
    cfg.sweep.test_points_per_class = ml_collections.FieldReference(None, field_type=int)  # None: all ranked
    cfg.sweep.test_points_seed = 0
    # Which ranked test points a sweep may use, judged by the run's final model: 'all',
    # 'correct' or 'wrong' (its prediction), within test_points_prob_range of gold-class
    # probability (e.g. (0.5, 0.95): DEL is not measured on saturated points); or the ids
    # listed in test_point_ids. The judging model is the run itself, so the sweep's seeds
    # exclude the run's own (exclude_run_seed): a retraining with that seed would be the
    # selecting model again, and DEL would carry the selection (regression to the mean).
    cfg.sweep.test_points = "all"
    cfg.sweep.test_points_prob_range = ml_collections.FieldReference(None, field_type=tuple)
    cfg.sweep.test_point_ids = ()
    cfg.sweep.exclude_run_seed = True
    cfg.sweep.epochs = ml_collections.FieldReference(None, field_type=int)  # None: train.epochs
    cfg.sweep.replicas = 0  # retrainings per program; 0: one per device on CPU (results as each ends), else as many as fit in memory
    cfg.sweep.max_replicas = 64
    cfg.sweep.memory_fraction = 0.5  # of each device's memory, when sizing replicas
    cfg.sweep.steps_per_call = 256  # training steps per device call (lax.scan length)
    cfg.sweep.vmap_width = 0  # replicas vmapped together per device; 0: all on GPU/TPU, 1 on CPU
    cfg.sweep.num_devices = ml_collections.FieldReference(None, field_type=int)  # None: all local
    cfg.sweep.heldout_size = 2000  # held-out accuracy per retrain; 0: every non-test eval example
    cfg.sweep.bootstrap = 1000  # appendix F: bootstrap samples for standard deviations
    cfg.sweep.max_attempts = 3  # a failing job is retried by later runs up to this many times
    # Workers on one manifest claim jobs; a claim not refreshed (every lease/3 s) for this
    # long belongs to a dead or preempted worker and is taken over.
    cfg.sweep.claim_lease_s = 600.0
    cfg.sweep.lds = ml_collections.ConfigDict()
    cfg.sweep.lds.num_subsets = 0  # linear datamodeling score; 0: off
    cfg.sweep.lds.alpha = 0.5  # share of the training set kept in each subset
    cfg.sweep.lds.seed = 0
    cfg.sweep.mislabel = ml_collections.ConfigDict()
    cfg.sweep.mislabel.enabled = True  # when the run knows its flipped labels (synthetic data)
    cfg.sweep.mislabel.inspect_fraction = 0.1
    cfg.sweep.fix = ml_collections.ConfigDict()
    cfg.sweep.fix.num_points = 0  # appendix L: misclassified test points (paper: 40); 0: off
    cfg.sweep.fix.p_low = 0.3  # predicted-class probability range of the chosen mistakes
    cfg.sweep.fix.p_high = 0.7
    cfg.sweep.fix.k_grid = (10, 20, 50, 100, 200)
    cfg.sweep.fix.methods = ("tracin_we_topk", "tracin_last")
    cfg.sweep.fix.kinds = ("remove", "pad")  # (a) remove top-k opponents, (b) [PAD] their worst token
    cfg.sweep.fix.seed = 0
    return cfg


# ----------------------------------------------------------------------------- config blocks
# Blocks of fields that several configs/*.py share. Each helper sets one block on ``cfg``
# in place (and returns it). Values that differ between experiments are required keyword
# arguments, so a config file still says which dataset, model and optimizer it uses; only
# what is fixed by the dataset's files or by the paper is filled in here.

def use_tfds(cfg: ml_collections.ConfigDict, name: str, *, train_split: str, eval_split: str,
             text_field: str | None, label_field: str | None, max_train: int | None, max_eval: int | None,
             pair_field: str | None = None) -> ml_collections.ConfigDict:
    """Data from the TFDS dataset ``name`` (``data.source = 'tfds'``).

    ``max_train`` / ``max_eval``: rows subsampled from each split (None: all);
    ``pair_field``: the second text segment of sentence-pair tasks (MNLI's hypothesis).
    """
    cfg.data.source = "tfds"
    cfg.data.name = name
    cfg.data.train_split = train_split
    cfg.data.eval_split = eval_split
    cfg.data.text_field = text_field
    cfg.data.pair_field = pair_field
    cfg.data.label_field = label_field
    cfg.data.max_train = max_train
    cfg.data.max_eval = max_eval
    return cfg


def use_sst2(cfg: ml_collections.ConfigDict, *, max_train: int | None) -> ml_collections.ConfigDict:
    """GLUE SST-2 from TFDS ``glue/sst2`` (train split ``train``, eval split ``validation``,
    labels negative / positive), ``max_train`` training sentences (None: all 67,349).

    ``text_field`` / ``label_field`` stay None: TFDS's ``sentence`` / ``label``, and with
    ``--config.data.source=files`` a file's ``text`` / ``label`` columns (0 = negative).
    """
    use_tfds(cfg, "glue/sst2", train_split="train", eval_split="validation", text_field=None,
             label_field=None, max_train=max_train, max_eval=None)
    cfg.data.label_names = ("negative", "positive")
    return cfg


def use_files(cfg: ml_collections.ConfigDict, *, train: str, eval: str, text: str = "text",
              text_pair: str | None = None, label: str = "label",
              label_names: tuple[str, ...] | None = None, columns: tuple[str, ...] | None = None,
              max_train: int | None = None, max_eval: int | None = None,
              name: str | None = None) -> ml_collections.ConfigDict:
    """Data from local files ``train`` and ``eval`` (``data.source = 'files'``).

    The reader follows each file's extension (.csv, .tsv, .jsonl / .json lines, .parquet;
    see ``tracin_jax.data.sources``). ``text`` / ``text_pair`` / ``label``: the column
    names; ``label_names``: the class names (None: inferred from the files, with a
    warning); ``columns``: csv / tsv without a header row, the names of its columns in
    order (None: the first row is the header); ``max_train`` / ``max_eval``: rows
    subsampled from each file (None: all); ``name``: the label reports carry (None:
    ``'files'``). The splits are called ``train`` and ``eval``.
    """
    cfg.data.source = "files"
    cfg.data.name = name or "files"
    cfg.data.files = {"train": train, "eval": eval}
    cfg.data.train_split = "train"
    cfg.data.eval_split = "eval"
    cfg.data.text_field = text
    cfg.data.pair_field = text_pair
    cfg.data.label_field = label
    cfg.data.label_names = None if label_names is None else tuple(label_names)
    cfg.data.columns = None if columns is None else tuple(columns)
    cfg.data.max_train = max_train
    cfg.data.max_eval = max_eval
    return cfg


def use_hf_checkpoint(cfg: ml_collections.ConfigDict, kind: str, hf_dir: str) -> ml_collections.ConfigDict:
    """A pretrained Hugging Face checkpoint directory ``hf_dir`` as the model.

    ``kind`` ('bert' | 'roberta') is both the model and the tokenizer kind; the tokenizer
    is read from ``hf_dir`` too unless ``tokenizer.path`` is set. The architecture (sizes,
    vocabulary) comes from the checkpoint's own config, not from ``cfg.model``.
    """
    cfg.tokenizer.kind = kind
    cfg.model.kind = kind
    cfg.model.hf_dir = hf_dir
    return cfg


def use_bert_from_scratch(cfg: ml_collections.ConfigDict, *, hidden_size: int, num_hidden_layers: int,
                          num_attention_heads: int, intermediate_size: int,
                          max_position_embeddings: int, dropout: float) -> ml_collections.ConfigDict:
    """A randomly initialised BERT of the given shape (no ``hf_dir``).

    ``dropout`` sets both ``hidden_dropout_prob`` and ``attention_probs_dropout_prob``.
    The tokenizer is left to the config (``tokenizer.kind`` / ``tokenizer.path``).
    """
    cfg.model.kind = "bert"
    cfg.model.hidden_size = hidden_size
    cfg.model.num_hidden_layers = num_hidden_layers
    cfg.model.num_attention_heads = num_attention_heads
    cfg.model.intermediate_size = intermediate_size
    cfg.model.max_position_embeddings = max_position_embeddings
    cfg.model.hidden_dropout_prob = dropout
    cfg.model.attention_probs_dropout_prob = dropout
    return cfg


def use_cnn(cfg: ml_collections.ConfigDict, *, vocab_size: int, min_freq: int, embed_dim: int, filters: int,
            kernel_sizes: tuple[int, ...], dropout_rate: float) -> ml_collections.ConfigDict:
    """The paper's text CNN (sec. 3.2 / Table 1), randomly initialised, over a word vocabulary.

    Embedding ``embed_dim``, one conv1d of ``filters`` filters per entry of ``kernel_sizes``
    (the paper: (5, 5, 1)), global max pool, dense. The word vocabulary is built from the
    training split: at most ``vocab_size`` words seen at least ``min_freq`` times.
    """
    cfg.tokenizer.kind = "word"
    cfg.tokenizer.vocab_size = vocab_size
    cfg.tokenizer.min_freq = min_freq
    cfg.model.kind = "cnn"
    cfg.model.embed_dim = embed_dim
    cfg.model.filters = filters
    cfg.model.kernel_sizes = tuple(kernel_sizes)
    cfg.model.dropout_rate = dropout_rate
    return cfg


def use_paper_sgd(cfg: ml_collections.ConfigDict, *, lr: float, epochs: int, batch_size: int,
                  checkpoint_every_epochs: int) -> ml_collections.ConfigDict:
    """The paper's training (sec. 5 / appendix K): SGD with momentum 0.9.

    The learning-rate schedule stays ``base_config``'s (constant, no warmup, no weight decay).
    """
    cfg.train.optimizer = "sgd"
    cfg.train.momentum = 0.9
    cfg.train.lr = lr
    cfg.train.epochs = epochs
    cfg.train.batch_size = batch_size
    cfg.train.checkpoint_every_epochs = checkpoint_every_epochs
    return cfg


# The repository's configs/ directory: ``--config demo`` names configs/demo.py.
REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def resolve_config_path(name: str | Path) -> Path:
    """A config file path, or the name of one in the repository's ``configs/``."""
    path = Path(name)
    if path.is_file():
        return path
    candidate = REPO_CONFIGS / (path.name if path.suffix == ".py" else f"{path.name}.py")
    if candidate.is_file() and path.parent == Path("."):
        return candidate
    known = sorted(p.stem for p in REPO_CONFIGS.glob("*.py")) if REPO_CONFIGS.is_dir() else []
    raise ConfigError(f"config {str(name)!r} not found (looked at {path.absolute()} and {candidate})",
                      f"pass a config file, or one of {known}")


def load_config(path: str | Path) -> ml_collections.ConfigDict:
    """Executes ``get_config()`` of a config file (Python, part of this repo or the user's)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"tracin_jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} defines no get_config()", "a config file returns its ConfigDict from get_config()")
    return module.get_config()


def parse_literal(text: str):
    """A Python literal (``1e-3``, ``(5, 10)``, ``None``, ``True``, ``'x'``) or, failing that, the text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


# Parsers of override values by the field's type (absl's, as ml_collections.config_flags uses).
_PARSERS = {bool: absl_flags.BooleanParser(), int: absl_flags.IntegerParser(),
            float: absl_flags.FloatParser(), tuple: TupleParser()}
_NONE = ("None", "none", "null")


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    """Applies ``config.a.b=value`` strings (the ``--`` and ``config.`` prefixes optional).

    Each value is parsed for the field's type (``ml_collections.config_flags.config_path``' field
    types and absl's parsers: ``1e-3``, ``3``, ``true``, ``(5, 10)``; ``None`` clears a
    field that may be unset) and type-checked by the ``ConfigDict``. Unknown keys and
    values of the wrong type raise ``ConfigError`` naming the key.
    """
    for item in overrides:
        item = item.removeprefix("--").removeprefix("config.")
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value", "e.g. --config.train.lr=1e-3")
        key, text = item.split("=", 1)
        try:
            field_type = config_path.get_type(key, cfg)
        except (AttributeError, KeyError):
            node, found = cfg, []  # the deepest section of the key that exists
            for part in key.split(".")[:-1]:
                if not isinstance(node.get(part), ml_collections.ConfigDict):
                    break
                node = node[part]
                found.append(part)
            raise ConfigError(f"unknown config key {key!r}", f"known keys at "
                              f"{'.'.join(found) or 'the top level'}: {sorted(node.keys())}") from None
        try:
            if text.strip() in _NONE:
                if config_path.get_value(key, cfg) is not None:
                    raise ValueError("this field cannot be None")
                value = None
            elif field_type in _PARSERS:
                value = _PARSERS[field_type].parse(text)
            elif field_type is str:
                value = text
            else:
                value = parse_literal(text)
            config_path.set_value(key, cfg, value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"--config.{key}={text}: {e}",
                              f"the field holds a {getattr(field_type, '__name__', field_type)}") from None
    return cfg


def to_json(cfg: ml_collections.ConfigDict) -> str:
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True, default=list)


def from_json(text: str) -> ml_collections.ConfigDict:
    base = base_config()
    loaded = json.loads(text)

    def merge(node, values):
        for key, value in values.items():
            if key in node and isinstance(node[key], ml_collections.ConfigDict) and isinstance(value, dict):
                merge(node[key], value)
            else:
                if isinstance(value, list) and key in node and isinstance(node[key], tuple):
                    value = tuple(value)
                with node.ignore_type():
                    node[key] = value

    merge(base, loaded)
    return base
