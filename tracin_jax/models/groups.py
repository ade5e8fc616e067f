"""Named parameter groups (docs/method.md: tracin_layer[name], cancellation ratio per layer).

Groups partition every parameter exactly once:
    BERT/RoBERTa: word_embedding | embeddings (position, type, LayerNorm) |
                  layer_0 .. layer_{n-1} | pooler | classifier
    CNN:          word_embedding | conv_0 | conv_1 | conv_2 | classifier
A path is a tuple of dict keys, e.g. ("encoder", "layer_0", "attention", "query", "kernel").
"""
from __future__ import annotations

import re
from typing import Any

import jax

Path = tuple[str, ...]

_LAYER = re.compile(r"^(layer|conv)_(\d+)$")


def _flatten(params) -> dict[Path, Any]:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {tuple(str(k.key) for k in path): leaf for path, leaf in leaves}


def _group_of(path: Path) -> str:
    if path[:2] == ("embeddings", "word_embeddings"):
        return "word_embedding"
    if path[0] == "embeddings":
        return "embeddings"
    if path[0] == "encoder" and len(path) > 1 and _LAYER.match(path[1]):
        return path[1]
    if path[0] in ("pooler", "classifier") or _LAYER.match(path[0]):
        return path[0]
    raise ValueError(f"parameter {'/'.join(path)} belongs to no known group")


def _order(name: str) -> tuple[int, int]:
    fixed = {"word_embedding": 0, "embeddings": 1, "pooler": 3, "classifier": 4}
    if name in fixed:
        return fixed[name], 0
    return 2, int(_LAYER.match(name).group(2))


def parameter_groups(params) -> dict[str, list[Path]]:
    """Group name -> sorted parameter paths, groups in data-flow order (input to output)."""
    groups: dict[str, list[Path]] = {}
    for path in sorted(_flatten(params)):
        groups.setdefault(_group_of(path), []).append(path)
    return {name: groups[name] for name in sorted(groups, key=_order)}


def is_bias(path: Path) -> bool:
    """True for a leaf named 'bias' (LayerNorm 'scale' counts as a weight)."""
    return path[-1] == "bias"


def select(params, group: str, include_bias: bool = False) -> dict[Path, Any]:
    """Flat {path: array} of one group's parameters, biases dropped unless asked."""
    groups = parameter_groups(params)
    if group not in groups:
        raise ValueError(f"unknown parameter group {group!r}; available: {list(groups)}")
    flat = _flatten(params)
    return {p: flat[p] for p in groups[group] if include_bias or not is_bias(p)}
