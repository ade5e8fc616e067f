"""tracin-jax <command>: which training examples drove a prediction (TracIn-WE).

This module only parses arguments and dispatches: each command's work is the ``run``
function of ``tracin_jax.commands.<command>``, imported when that command runs (so
``tracin-jax --help`` starts without JAX). Errors the user can act on are printed as one
line, ``error: <what>; <what to do>`` (exit 2 for usage errors, 1 otherwise); ``--debug``
or ``TRACIN_JAX_DEBUG=1`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

DESCRIPTION = """\
Which training examples drove a language model's prediction? TracIn-WE (TracIn on the
word-embedding layer) for JAX/Flax text classifiers.

Typical flow:
  tracin-jax train  --config configs/demo.py --workdir runs/demo/run
  tracin-jax grads  --run runs/demo/run --split train --out runs/demo/grads/train
  tracin-jax grads  --run runs/demo/run --split test  --out runs/demo/grads/test
  tracin-jax score  --method tracin_we_topk --run runs/demo/run \\
                    --train runs/demo/grads/train --test runs/demo/grads/test --out runs/demo/scores

Config fields are overridable wherever a config is read: --config.train.lr=1e-3.
Run 'tracin-jax COMMAND --help' for a command's options."""

DEBUG_ENV = "TRACIN_JAX_DEBUG"
# Libraries whose INFO chatter hides ours.
_QUIET_LOGGERS = ("absl", "jax", "jax._src", "orbax", "tensorflow", "urllib3", "matplotlib", "h5py",
                  "etils", "tensorflow_datasets")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows an option's default after its help, unless it is None/False or already said."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (default not in (None, False, argparse.SUPPRESS) and not isinstance(default, list)
                and "default" not in text and action.option_strings):
            text += f" (default: {default})"
        return text


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: <what>; see 'tracin-jax ... --help'`` and exit 2."""

    def error(self, message):  # noqa: D401 (argparse API)
        self.exit(2, f"error: {message}; see '{self.prog} --help'\n")


def _target(func: str):
    """``"module:function"`` under ``tracin_jax.commands``."""
    return {"target": func}


def _common(p: argparse.ArgumentParser, progress: bool = True) -> None:
    if progress:
        p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _no_verify(p) -> None:
    p.add_argument("--no-verify", action="store_true",
                   help="use checkpoints whose parameters no longer match the digests recorded when they "
                        "were saved (a damaged checkpoint gives wrong numbers: prefer re-training)")


def _allow_mismatch(p) -> None:
    p.add_argument("--allow-mismatch", action="store_true",
                   help="score stores computed from different models or parameters (a deliberate "
                        "cross-model study); by default that is an error")


def _config_arg(p, default=None, required=False, what="experiment config"):
    p.add_argument("--config", default=default, required=required,
                   help=f"{what}: a Python file defining get_config(), or the name of one in the "
                        "repository's configs/ (e.g. demo); fields are overridable as --config.FIELD=VALUE")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="tracin-jax", description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug messages too")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="only warnings and errors (hides notices such as 'resumed from step N')")
    parser.add_argument("--debug", action="store_true",
                        help=f"show tracebacks instead of one-line errors (also {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=Parser)

    def command(name, help_, target):
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)
        p.set_defaults(**_target(target))
        return p

    # -- train
    p = command("train", "Fine-tune a model, saving checkpoints with their learning rates.", "train:run")
    _config_arg(p, required=True)
    p.add_argument("--workdir", help="run directory (default: runs/<config name>); a finished or killed "
                   "run with the same config resumes from its last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="delete an existing run in --workdir made with a different config and start over")
    _no_verify(p)
    _common(p)

    # -- import
    p = command("import", "Turn checkpoints trained elsewhere (Hugging Face BERT/RoBERTa classifier "
                "directories) into a run directory the other commands read.", "import_:run")
    p.add_argument("--hf", nargs="+", required=True, metavar="DIR",
                   help="Hugging Face checkpoint directories (config.json + model.safetensors), e.g. "
                        "out/checkpoint-500 out/checkpoint-1000")
    p.add_argument("--lr", default=None,
                   help="learning rate in force at each checkpoint, comma-separated, in the order of --hf "
                        "(default: --trainer-state, else lr.txt or trainer_state.json inside each directory)")
    p.add_argument("--trainer-state", default=None, metavar="FILE",
                   help="a Hugging Face Trainer's trainer_state.json: each checkpoint's rate is the "
                        "learning_rate logged at (or last before) its step")
    p.add_argument("--steps", default=None,
                   help="checkpoint steps, comma-separated (default: from checkpoint-N names, else 1, 2, ...)")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="tokenizer files (default: found beside the checkpoints; none: pre-tokenised data only)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per example when reading text")
    p.add_argument("--out", required=True, help="the run directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")

    # -- grads
    p = command("grads", "Per-example word-embedding gradients of a split, over a run's checkpoints, "
                "into a gradient store.", "grads:run")
    p.add_argument("--run", required=True, help="training run directory (tracin-jax train --workdir)")
    p.add_argument("--split", default="train",
                   help="train, eval or test (the run's balanced test points), a name attached with --data; "
                        "comma-separated for several (each into --out/SPLIT)")
    p.add_argument("--data", default=None, metavar="FILE",
                   help="a labelled file (csv, tsv, jsonl, parquet; text or pre-tokenised input_ids rows) "
                        "attached to the run as --split NAME; later commands find it by that name")
    p.add_argument("--columns", default=None,
                   help="with --data, a csv/tsv file without a header: its column names in order, "
                        "e.g. text,label (default: the first row is a header)")
    p.add_argument("--text-field", default="text", help="with --data: the text column")
    p.add_argument("--pair-field", default=None, help="with --data: a second text column (sentence pairs)")
    p.add_argument("--label-field", default="label",
                   help="with --data: the label column (class indices or the run's class names)")
    p.add_argument("--encoding", default="utf-8", help="with --data: the text encoding of csv/tsv/jsonl files")
    p.add_argument("--checkpoints", default=None, help="checkpoint steps, e.g. 126,252 (default: all of the run's)")
    p.add_argument("--k", default=None, help="top-k positions kept per example by gradient norm "
                   "(docs/method.md, eq. 5); 0 = exact per-token vectors (default: the run's grads.k)")
    p.add_argument("--topk-by", default=None, choices=("position", "token"),
                   help="rank single positions (the paper's) or merged tokens (default: the run's grads.topk_by)")
    p.add_argument("--dtype", "--store-dtype", dest="dtype", default=None,
                   choices=("float32", "bfloat16", "float16"),
                   help="storage dtype of the vectors; scores are always summed in float32 "
                        "(default: the run's grads.dtype, 'auto': bfloat16 for top-k stores, "
                        "float32 for exact ones, --k 0)")
    p.add_argument("--shard-size", type=int, default=None,
                   help="examples per store shard (default: the run's grads.shard_size)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="examples per gradient step over all local devices (default: the run's grads.batch_size)")
    p.add_argument("--param-groups", default=None,
                   help="also store per-example gradients of these parameter groups (comma-separated, or "
                        "'all') from the same pass, as the field param_grads")
    p.add_argument("--include-bias", action="store_true", help="with --param-groups: keep the biases")
    p.add_argument("--out", required=True, help="store directory; an unfinished store with the same "
                   "arguments resumes, one made with other arguments is an error (see --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace a store in --out made with other arguments")
    _no_verify(p)
    _common(p)

    # -- score
    p = command("score", "Top proponents and opponents of each test point, with the words that drive "
                "each score (JSONL + HTML report).", "score:run")
    p.add_argument("--method", required=True,
                   help="influence method: tracin_we, tracin_we_topk, tracin_we_noc, tracin_common, "
                        "tracin_we_syn, tracin_last, tracin_layer[GROUP,...], tracin_all, influence_last, "
                        "representer, tracin_tfidf")
    p.add_argument("--test", required=True, help="gradient store of the test points")
    p.add_argument("--train", required=True, help="gradient store of the training examples")
    p.add_argument("--run", default=None, help="training run directory: texts and tokens for the report, "
                   "parameters for methods that need them")
    p.add_argument("--top", type=int, default=100, help="proponents and opponents kept per test point")
    p.add_argument("--out", default=None, help="output directory (retrieval.npz, scores.jsonl, "
                   "report.html, summary.json); required unless --matrix")
    p.add_argument("--matrix", default=None, metavar="OUT.npy",
                   help="also (or only) write the dense [test, train] score matrix (float32 .npy, rows in "
                        "test-store order, columns in train-store order) and OUT.ids.json naming them")
    p.add_argument("--max-matrix-gb", type=float, default=4.0,
                   help="refuse a --matrix larger than this many GB (use top-k rankings instead)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace outputs in --out that were made with other arguments")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, e.g. --opt damping=0.1 (repeatable)")
    p.add_argument("--candidates", default=None,
                   help="JSON file: a list of train ids every test point is restricted to, or "
                        "{test_id: [train ids]} (e.g. the no-overlap experiment)")
    p.add_argument("--part", default=None, metavar="I/N",
                   help="score only training shards s with s %% N == I and write part-I-of-N.npz (many hosts)")
    p.add_argument("--merge", nargs="+", default=None, metavar="PART",
                   help="merge part-*.npz files exactly, then write the outputs")
    p.add_argument("--top-tokens", type=int, default=5, help="tokens listed per JSONL line")
    p.add_argument("--html-top", type=int, default=10, help="neighbours per kind shown in the HTML report")
    p.add_argument("--no-html", action="store_true", help="skip report.html")
    _allow_mismatch(p)
    _no_verify(p)
    _common(p)

    # -- self-influence
    p = command("self-influence", "Training examples ranked by self-influence (mislabel search), with "
                "detection metrics beside random and loss ranking when the flipped ids are known.",
                "self_influence:run")
    p.add_argument("--method", default="tracin_we",
                   help="influence method whose score(x, x) ranks the examples (docs/method.md)")
    p.add_argument("--store", required=True, help="gradient store of the training examples")
    p.add_argument("--run", default=None, help="run directory: texts for the report, parameters for "
                   "methods that need them")
    p.add_argument("--flipped", default=None, metavar="IDS.json",
                   help="JSON list of training ids with known wrong labels: report ROC-AUC and recall at "
                        "10%%/20%% of this ranking, of the loss, and of random inspection")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="method option (repeatable)")
    p.add_argument("--html-top", type=int, default=200, help="examples listed in report.html")
    p.add_argument("--out", required=True, help="output directory (self_influence.jsonl, report.html, summary.json)")
    _no_verify(p)

    # -- explain
    p = command("explain", "One pair's score, decomposed over its shared tokens (they sum to the score).",
                "explain:run")
    p.add_argument("--method", default="tracin_we_topk",
                   help="a method with a word-level decomposition (tracin_we family); others print the score only")
    p.add_argument("--test", required=True, help="gradient store of the test points")
    p.add_argument("--train", required=True, help="gradient store of the training examples")
    p.add_argument("--test-id", type=int, required=True, help="example id of the test point (a row of the test store)")
    p.add_argument("--train-id", type=int, required=True, help="example id of the training example")
    p.add_argument("--run", default=None, help="training run directory (decodes token ids to strings)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="method option (repeatable)")
    p.add_argument("--top", type=int, default=None, help="show only the N tokens of largest |contribution|")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    _allow_mismatch(p)
    _no_verify(p)

    # -- demo
    p = command("demo", "The whole job end to end on the embedded synthetic data (minutes on a CPU).",
                "demo:run")
    _config_arg(p, default="demo")
    p.add_argument("--out", default="runs/demo", help="output directory; a rerun resumes finished stages")
    _common(p)

    # -- analyze
    analyze = sub.add_parser("analyze", help="The paper's analyses: cancellation ratio (sec. 3), mislabel "
                             "clusters (appendix A).", formatter_class=HelpFormatter)
    kinds = analyze.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS", parser_class=Parser)
    p = kinds.add_parser("cancellation", formatter_class=HelpFormatter,
                         help="C(W), G(W)_c, ΔW_c and gradient cosine similarity per parameter group "
                              "(bias vs weight, per layer): table, JSON, bar plot.")
    p.set_defaults(**_target("analyze:cancellation_cmd"))
    p.add_argument("--run", required=True, help="training run directory")
    p.add_argument("--split", default="train", help="examples whose gradients are summed (train, eval, test)")
    p.add_argument("--num-examples", type=int, default=256, help="sample size; G is scaled to the split")
    p.add_argument("--seed", type=int, default=0, help="sample seed")
    p.add_argument("--checkpoints", default=None, help="steps, e.g. 100,200,300 (default: all)")
    p.add_argument("--groups", default=None, help="parameter groups, e.g. word_embedding,layer_0 (default: all)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="examples per gradient call (default: as many as 2^24 gradient floats allow)")
    p.add_argument("--out", required=True, help="output directory")
    _no_verify(p)
    _common(p)
    p = kinds.add_parser("clusters", formatter_class=HelpFormatter,
                         help="Hard training examples clustered by influence distance (appendix A), "
                              "with their common words, as Markdown.")
    p.set_defaults(**_target("analyze:clusters_cmd"))
    p.add_argument("--run", required=True, help="training run directory")
    p.add_argument("--models", type=int, default=5, help="N models trained to find hard examples")
    p.add_argument("--seeds", default=None, help="seeds of the N models, e.g. 0,1,2 (default: 0..N-1)")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs of the N models (early stopping; default: the run's)")
    p.add_argument("--min-error-rate", type=float, default=0.4,
                   help="an example is hard if at least this share of the N models misclassify it")
    p.add_argument("--hard-positions", default=None,
                   help="JSON list of training rows to cluster (skips training the N models)")
    p.add_argument("--method", default="tracin_we", help="influence method of the distance")
    p.add_argument("--threshold", type=float, default=0.8, help="agglomerative clustering distance threshold")
    p.add_argument("--min-size", type=int, default=3, help="smallest cluster reported")
    p.add_argument("--linkage", default="average", choices=("average", "complete", "single"),
                   help="agglomerative clustering linkage")
    p.add_argument("--out", required=True, help="output directory")
    _no_verify(p)
    _common(p)

    # -- sweep
    sweep = sub.add_parser("sweep", help="Case-deletion sweeps: plan, run (sharded, restartable), report.",
                           formatter_class=HelpFormatter)
    steps = sweep.add_subparsers(dest="sweep_command", required=True, metavar="STEP", parser_class=Parser)
    p = steps.add_parser("plan", formatter_class=HelpFormatter,
                         help="Write the manifest of retraining jobs from rankings; estimate its cost.")
    p.set_defaults(**_target("sweep:plan"))
    _config_arg(p, what="config whose sweep settings are used (default: the run's saved config)")
    p.add_argument("--run", default=None, help="training run directory (default: runs/<config name>)")
    p.add_argument("--out", required=True, help="sweep directory (manifest.json, results/, report/)")
    p.add_argument("--rankings", nargs="*", default=[],
                   help="tracin-jax score output directories (or retrieval.npz / scores.jsonl), one per method")
    p.add_argument("--train-store", default=None,
                   help="training gradient store (rankings, LDS and self-influence computed here)")
    p.add_argument("--test-store", default=None, help="test-point gradient store")
    p.add_argument("--methods", default=None,
                   help="methods to compare, comma-separated (e.g. tracin_we_topk,tracin_last,random; "
                        "'random' removes random training examples: the control); default sweep.methods")
    p.add_argument("--test-points", default=None, metavar="all|correct|wrong|IDS.json",
                   help="which ranked test points to use, judged by the run's final model, or a JSON list "
                        "of test ids (default sweep.test_points)")
    p.add_argument("--prob-range", default=None, metavar="LOW,HIGH",
                   help="only test points whose gold-class probability under the run's model is in "
                        "[LOW, HIGH], e.g. 0.5,0.95 (DEL is not measured on saturated points)")
    p.add_argument("--no-measure", action="store_true", help="skip timing replica steps for the estimate")
    p.add_argument("--pilot", default=None, metavar="SWEEP",
                   help="a finished (pilot) sweep: print how many test points and seeds resolve --effect "
                        "between two methods, and their cost in retraining-hours")
    p.add_argument("--effect", type=float, default=0.05,
                   help="difference of AUC-DEL between two methods to resolve (with --pilot)")
    _allow_mismatch(p)
    _no_verify(p)
    _common(p)
    p = steps.add_parser("run", formatter_class=HelpFormatter,
                         help="Run this worker's unfinished jobs, R retrainings per program.")
    p.set_defaults(**_target("sweep:run"))
    p.add_argument("--manifest", required=True, help="sweep directory or its manifest.json")
    p.add_argument("--shard", type=int, default=None,
                   help="static sharding: run jobs i with i %% N == SHARD (default: from the job environment: "
                        "jax.process_index(), SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX)")
    p.add_argument("--num-shards", type=int, default=None, help="N of --shard (default: from the environment)")
    p.add_argument("--replicas", type=int, default=None,
                   help="R retrainings per program (default: the plan's sweep.replicas; 0 = from memory)")
    p.add_argument("--max-jobs", type=int, default=None, help="stop after this many jobs")
    _common(p)
    p = steps.add_parser("report", formatter_class=HelpFormatter,
                         help="DEL±/AUC-DEL± with intervals, LDS, mislabel detection, fixing: tables "
                              "(Markdown, CSV) and plots (PNG).")
    p.set_defaults(**_target("sweep:report"))
    p.add_argument("--manifest", required=True, help="sweep directory or its manifest.json")
    p.add_argument("--out", default=None, help="output directory (default: SWEEP/report)")
    p.add_argument("--bootstrap", type=int, default=None,
                   help="bootstrap samples (default: the plan's sweep.bootstrap)")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")
    p.add_argument("--effect", type=float, default=0.05,
                   help="difference between two methods the power advice (power.md) plans for")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    return parser


def _setup_logging(verbose: bool, quiet: bool) -> None:
    """tracin_jax's own messages on stderr: notices (INFO) by default, DEBUG with -v, only
    warnings with -q; other libraries' chatter at WARNING."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    ours = logging.getLogger("tracin_jax")
    ours.handlers.clear()
    handler = _StderrHandler()
    handler.setFormatter(_Formatter())
    ours.addHandler(handler)
    ours.setLevel(level)
    ours.propagate = False
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if not verbose else logging.INFO)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (tests swap it)."""

    def emit(self, record):
        self.stream = sys.stderr
        super().emit(record)


class _Formatter(logging.Formatter):
    def format(self, record):
        prefix = {logging.WARNING: "warning: ", logging.ERROR: "error: ", logging.DEBUG: "debug: "}
        return prefix.get(record.levelno, "") + record.getMessage()


def _one_line(text: str, limit: int = 600) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


GLOBAL_FLAGS = ("-q", "--quiet", "-v", "--verbose", "--debug")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --config.a.b=v overrides are collected here; argparse sees the rest.
    overrides = [a for a in argv if a.startswith("--config.")]
    # -q / -v / --debug are accepted before or after the command (`tracin-jax train ... -q`).
    anywhere = [a for a in argv if a in GLOBAL_FLAGS]
    rest = [a for a in argv if not a.startswith("--config.") and a not in GLOBAL_FLAGS]
    args = build_parser().parse_args(anywhere + rest)
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    _setup_logging(args.verbose, args.quiet)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    module_name, func_name = args.target.split(":")
    try:
        module = importlib.import_module(f"tracin_jax.commands.{module_name}")
        return int(getattr(module, func_name)(args, overrides) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:  # one line for the user; the traceback only when asked for
        if debug:
            raise
        from tracin_jax.errors import TracinError  # light: no JAX
        if isinstance(e, TracinError):
            print(f"error: {_one_line(e)}", file=sys.stderr)
            return e.exit_code
        if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
            print(f"error: {_one_line(e)}; check the path", file=sys.stderr)
            return 1
        print(f"error: {type(e).__name__}: {_one_line(e)}; run with --debug for the traceback",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
