"""The commands behind ``tracin-jax``: one module per command, each with ``run(args, overrides)``.

``tracin_jax.cli`` parses the arguments and imports only the module of the command that
runs. Helpers shared by several commands live here.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from tracin_jax import config as config_lib
from tracin_jax.errors import UsageError

log = logging.getLogger(__name__)


def load_config(name: str, overrides):
    """The config file ``name`` (a path, or a name in the repository's configs/) with
    ``--config.*`` overrides applied."""
    return config_lib.apply_overrides(config_lib.load_config(config_lib.resolve_config_path(name)), overrides)


def no_overrides(command: str, overrides, instead: str) -> None:
    if overrides:
        raise UsageError(f"{command} takes no --config.* overrides (got {overrides[0]})", instead)


def method_options(items) -> dict:
    """``["k=10", "damping=0.1"]`` -> ``{"k": 10, "damping": 0.1}`` (Python literals, else strings)."""
    options = {}
    for item in items or ():
        if "=" not in item:
            raise UsageError(f"--opt {item!r} is not of the form key=value", "e.g. --opt damping=0.1")
        key, text = item.split("=", 1)
        options[key.strip()] = config_lib.parse_literal(text)
    return options


def read_candidates(path):
    """``(shared ids, per-test ids)`` from a JSON list of train ids or ``{test_id: [train ids]}``."""
    if path is None:
        return None, None
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict):
        return None, {int(k): [int(i) for i in v] for k, v in data.items()}
    if isinstance(data, list):
        return [int(i) for i in data], None
    raise UsageError(f"{path}: expected a JSON list of train ids or an object test_id -> ids")


def parse_part(text):
    """``"I/N"`` -> ``(I, N)`` with 0 <= I < N."""
    if text is None:
        return None
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"--part {text!r} must look like I/N", "e.g. --part 0/4") from None
    if not 0 <= index < count:
        raise UsageError(f"--part {text!r}: need 0 <= I < N")
    return index, count


def print_json(obj) -> None:
    print(json.dumps(obj, default=str))


def report_weights(what: str, weights) -> None:
    """Logs the checkpoints ``what`` sums over — ``weights``: ``[(step, weight)]`` (η_c for the
    TracIn family) — with each one's share of the total, and warns about a checkpoint holding
    under 1% of it: it contributes almost nothing (e.g. the end of a linear decay), which
    changes what the scores mean."""
    weights = [(int(s), float(w)) for s, w in weights]
    total = sum(abs(w) for _, w in weights) or 1.0
    log.info("%s sums over checkpoints: %s", what,
             ", ".join(f"step {s} (weight {w:.3g}, {100 * abs(w) / total:.1f}%)" for s, w in weights))
    small = [s for s, w in weights if abs(w) / total < 0.01]
    if small and len(weights) > 1:
        log.warning("checkpoint(s) %s hold under 1%% of the total weight (learning rate near 0): they "
                    "contribute almost nothing to %s", small, what)


def split_methods(text: str) -> list[str]:
    """``a,tracin_layer[x,y],b`` -> ``["a", "tracin_layer[x,y]", "b"]`` (commas inside brackets kept)."""
    out, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            out.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        out.append(current.strip())
    return out
