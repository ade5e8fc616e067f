"""The method registry: names (SPEC "Methods") -> method instances."""
from __future__ import annotations

import re
from typing import Callable

from tracin_jax.methods.base import Method
from tracin_jax.methods.tfidf import TracInTFIDF
from tracin_jax.methods.tracin_last import InfluenceLast, Representer, TracInLast
from tracin_jax.methods.tracin_layer import TracInLayer
from tracin_jax.methods.tracin_syn import TracInWESyn
from tracin_jax.methods.tracin_we import TracInCommon, TracInWE, TracInWENoC, TracInWETopK

METHODS: dict[str, Callable[..., Method]] = {
    "tracin_we": TracInWE,
    "tracin_we_topk": TracInWETopK,
    "tracin_we_noc": TracInWENoC,
    "tracin_common": TracInCommon,
    "tracin_we_syn": TracInWESyn,
    "tracin_last": TracInLast,
    "tracin_all": lambda **kw: TracInLayer(groups=None, **kw),
    "influence_last": InfluenceLast,
    "representer": Representer,
    "tracin_tfidf": TracInTFIDF,
}
_LAYER = re.compile(r"^tracin_layer\[([^\]]+)\]$")


def method_names() -> list[str]:
    return sorted(METHODS) + ["tracin_layer[GROUP,...]"]


def get_method(name: str | Method, **options) -> Method:
    """A method instance by registry name, e.g. ``get_method("influence_last", damping=0.1)``.

    ``tracin_layer[layer_0]`` / ``tracin_layer[layer_0,pooler]`` select parameter groups.
    An instance is returned unchanged (options must then be empty).
    """
    if isinstance(name, Method):
        if options:
            raise ValueError(f"options {sorted(options)} given with a method instance {name.name!r}")
        return name
    match = _LAYER.match(str(name).strip())
    if match:
        groups = [g.strip().strip("'\"") for g in match.group(1).split(",") if g.strip()]
        return TracInLayer(groups=groups, **options)
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {method_names()}")
    try:
        return METHODS[name](**options)
    except TypeError as e:
        raise ValueError(f"bad options {options} for method {name!r}: {e}") from e
