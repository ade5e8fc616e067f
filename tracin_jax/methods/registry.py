"""The method registry: names (docs/method.md "Methods") -> method instances."""
from __future__ import annotations

import re
from typing import Callable

from tracin_jax.methods.base import Method, MethodError
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
BIAS_SUFFIX = "+bias"  # "tracin_all+bias": the same method with the biases counted


def method_names() -> list[str]:
    return sorted(METHODS) + ["tracin_layer[GROUP,...]", "tracin_all+bias", "tracin_layer[GROUP,...]+bias"]


def get_method(name: str | Method, **options) -> Method:
    """A method instance by registry name, e.g. ``get_method("influence_last", damping=0.1)``.

    ``tracin_layer[layer_0]`` / ``tracin_layer[layer_0,pooler]`` select parameter groups;
    a ``+bias`` suffix (``tracin_all+bias``) counts their biases too (``include_bias``).
    An instance is returned unchanged (options must then be empty).
    """
    if isinstance(name, Method):
        if options:
            raise MethodError(f"options {sorted(options)} given with a method instance {name.name!r}")
        return name
    name = str(name).strip()
    if name.endswith(BIAS_SUFFIX):  # tracin_all+bias, tracin_layer[...]+bias (paper sec. 3.2)
        base = name[:-len(BIAS_SUFFIX)]
        if base != "tracin_all" and not _LAYER.match(base):
            raise MethodError(f"{BIAS_SUFFIX!r} applies to tracin_all and tracin_layer[...] only, "
                             f"got {name!r}")
        if "include_bias" in options:
            raise MethodError(f"{name!r} already includes the bias; do not also pass include_bias")
        return get_method(base, include_bias=True, **options)
    match = _LAYER.match(name)
    if match:
        groups = [g.strip().strip("'\"") for g in match.group(1).split(",") if g.strip()]
        return TracInLayer(groups=groups, **options)
    if name not in METHODS:
        raise MethodError(f"unknown method {name!r}; available: {method_names()}")
    try:
        return METHODS[name](**options)
    except TypeError as e:
        raise MethodError(f"bad options {options} for method {name!r}: {e}") from e
