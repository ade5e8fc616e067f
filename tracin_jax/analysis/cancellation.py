"""Cancellation ratio and expected gradient cosine similarity per parameter group (paper sec. 3).

For a set of parameters W (a *view*: one group's weights, one group's biases, all
biases, ...) and saved checkpoints ``c = 1..C`` with learning rates ``η_c``:

    ΔW_c   = ‖W_{c+1} − W_c‖                              (c = 1..C−1)
    G(W)_c = Σ_{i ∈ D} η_c ‖∂ℓ(x_i)/∂W_c‖                 (c = 1..C−1)
    C(W)   = Σ_c G(W)_c / Σ_c ΔW_c                        (docs/method.md "Analyses", paper sec. 3.1)

A large C(W) means the per-example gradients through W are large while W itself
barely moves: the examples' contributions cancel (bias terms, late layers). ΔW_c
needs a successor checkpoint, so G is summed over the same ``C − 1`` checkpoints.
On a sample ``S`` of the training set, ``G`` is estimated as ``|D|/|S| · Σ_{i∈S}``
(``scale``); ``C(W)`` is linear in that factor.

Expected gradient cosine similarity (paper sec. 3.3), per view and checkpoint:

    E_{a≠b} cos(∂ℓ(x_a)/∂W, ∂ℓ(x_b)/∂W) = (‖Σ_i u_i‖² − Σ_i ‖u_i‖²) / (n(n−1)),
    u_i = g_i / ‖g_i‖ (u_i = 0 when g_i = 0),

the mean over ordered pairs of distinct examples, computed in one streaming pass
(no ``[n, n]`` matrix). Per-example gradients come from
``grads.param_grads.ParamGradients`` (vmap(grad) under shard_map).
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from tracin_jax.analysis.plots import cancellation_bars
from tracin_jax.files import atomic_write_json, atomic_write_text
from tracin_jax.grads.param_grads import ParamGradients
from tracin_jax.models import is_bias, parameter_groups

log = logging.getLogger(__name__)

ParamPath = tuple[str, ...]
# Host memory bound for one call's gradients [rows, P] (float32 elements).
_ROWS_ELEMENTS = 2**25
WORD_EMBEDDING_GROUP = "word_embedding"
ALL_WEIGHTS = "all/weight"  # every weight except the word embedding (paper sec. 3.2)
ALL_BIASES = "all/bias"


@dataclasses.dataclass(frozen=True)
class View:
    """A named set of parameters W: ``group`` ("all" for aggregates), ``kind`` weight|bias."""

    name: str
    group: str
    kind: str
    paths: tuple[ParamPath, ...]


def _flat(params) -> dict[ParamPath, np.ndarray]:
    from flax import traverse_util
    return {tuple(str(k) for k in p): v for p, v in traverse_util.flatten_dict(params).items()}


def parameter_views(params, groups: Sequence[str] | None = None,
                    aggregates: bool = True) -> list[View]:
    """Per group: ``GROUP/weight`` and (if it has biases) ``GROUP/bias``; then the aggregates
    ``all/weight`` (every weight but the word embedding) and ``all/bias``.

    ``groups`` restricts the per-group views (default: every group of
    ``models.parameter_groups``); aggregates always span every group.
    """
    available = parameter_groups(params)
    names = list(available) if groups is None else list(groups)
    unknown = [g for g in names if g not in available]
    if unknown:
        raise ValueError(f"unknown parameter groups {unknown}; available: {list(available)}")
    views = []
    for g in names:
        for kind in ("weight", "bias"):
            paths = tuple(p for p in available[g] if is_bias(p) == (kind == "bias"))
            if paths:
                views.append(View(f"{g}/{kind}", g, kind, paths))
    if aggregates:
        weights = tuple(p for g, ps in available.items() if g != WORD_EMBEDDING_GROUP
                        for p in ps if not is_bias(p))
        biases = tuple(p for ps in available.values() for p in ps if is_bias(p))
        if weights:
            views.append(View(ALL_WEIGHTS, "all", "weight", weights))
        if biases:
            views.append(View(ALL_BIASES, "all", "bias", biases))
    return views


def parameter_change(params_a, params_b, paths: Sequence[ParamPath]) -> float:
    """``‖W_b − W_a‖`` (Frobenius norm over the concatenated ``paths``), float64."""
    fa, fb = _flat(params_a), _flat(params_b)
    total = 0.0
    for p in paths:
        diff = np.asarray(fb[p], np.float64) - np.asarray(fa[p], np.float64)
        total += float(np.sum(diff * diff))
    return float(np.sqrt(total))


def cancellation_ratio(grad_norm_sums: np.ndarray, learning_rates: np.ndarray,
                       changes: np.ndarray) -> float:
    """``C(W) = Σ_c η_c S_c / Σ_c ΔW_c`` with ``S_c = Σ_i ‖∂ℓ(x_i)/∂W_c‖``; all inputs ``[C−1]``.

    Returns ``inf`` when W never changes but has gradient (total cancellation),
    ``nan`` when both are zero.
    """
    s, lr, d = (np.asarray(x, np.float64) for x in (grad_norm_sums, learning_rates, changes))
    if not s.shape == lr.shape == d.shape or s.ndim != 1:
        raise ValueError(f"need three [C-1] arrays, got shapes {s.shape}, {lr.shape}, {d.shape}")
    g, delta = float(np.sum(lr * s)), float(np.sum(d))
    if delta == 0.0:
        return float("nan") if g == 0.0 else float("inf")
    return g / delta


def mean_pairwise_cosine(unit_sum: np.ndarray, unit_sq_norm_sum: float, n: int) -> float:
    """``(‖Σ u_i‖² − Σ‖u_i‖²) / (n(n−1))``: mean cosine over ordered distinct pairs."""
    if n < 2:
        raise ValueError(f"the mean pairwise cosine needs at least 2 examples, got {n}")
    s = np.asarray(unit_sum, np.float64)
    return float((np.dot(s, s) - unit_sq_norm_sum) / (n * (n - 1)))


@dataclasses.dataclass
class GradientStatistics:
    """Sums over examples of one checkpoint, per view (index = position in ``views``)."""

    norm_sums: np.ndarray  # [V] float64, Σ_i ‖g_i‖
    cosines: np.ndarray  # [V] float64, mean pairwise cosine
    num_examples: int


def _column_ranges(paths: Sequence[ParamPath], sizes: dict[ParamPath, int]) -> dict[ParamPath, slice]:
    out, start = {}, 0
    for p in paths:
        out[p] = slice(start, start + sizes[p])
        start += sizes[p]
    return out


def gradient_statistics(grads_fn: Callable[[np.ndarray], np.ndarray], rows: np.ndarray,
                        paths: Sequence[ParamPath], sizes: dict[ParamPath, int],
                        views: Sequence[View], rows_per_call: int | None = None) -> GradientStatistics:
    """Σ‖g_i‖ and the mean pairwise cosine of every view, streaming over ``rows``.

    ``grads_fn(rows) -> [len(rows), P]`` returns per-example gradients of the
    parameters ``paths`` (concatenated in that order, leaves flattened row-major,
    sizes ``sizes``), e.g. ``ParamGradients.grads`` bound to a checkpoint.
    """
    rows = np.asarray(rows, np.int64)
    if len(rows) < 2:
        raise ValueError(f"need at least 2 examples, got {len(rows)}")
    cols = _column_ranges(paths, sizes)
    missing = sorted({p for v in views for p in v.paths} - set(cols))
    if missing:
        raise ValueError(f"views use parameters without gradients: {missing[:5]}")
    total = sum(sizes[p] for p in paths)
    per_call = rows_per_call or max(1, _ROWS_ELEMENTS // max(total, 1))
    norm_sums = np.zeros(len(views), np.float64)
    unit_sums = [np.zeros(sum(sizes[p] for p in v.paths), np.float64) for v in views]
    unit_sq = np.zeros(len(views), np.float64)
    for start in range(0, len(rows), per_call):
        g = np.asarray(grads_fn(rows[start:start + per_call]), np.float64)  # [b, P]
        if g.shape != (min(per_call, len(rows) - start), total):
            raise RuntimeError(f"grads_fn returned {g.shape}, expected "
                               f"({min(per_call, len(rows) - start)}, {total})")
        leaf_sq = {p: np.sum(g[:, cols[p]] ** 2, axis=1) for p in paths}
        for v_i, view in enumerate(views):
            norms = np.sqrt(sum(leaf_sq[p] for p in view.paths))  # [b]
            norm_sums[v_i] += norms.sum()
            inv = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)
            unit_sq[v_i] += float(np.sum(norms > 0))
            offset = 0
            for p in view.paths:
                block = g[:, cols[p]]
                unit_sums[v_i][offset:offset + block.shape[1]] += inv @ block
                offset += block.shape[1]
    cosines = np.asarray([mean_pairwise_cosine(unit_sums[i], unit_sq[i], len(rows))
                          for i in range(len(views))])
    return GradientStatistics(norm_sums=norm_sums, cosines=cosines, num_examples=len(rows))


# ----------------------------------------------------------------------------- report

@dataclasses.dataclass
class ViewResult:
    name: str
    group: str
    kind: str
    num_parameters: int
    grad_norm_sums: list[float]  # [C−1] Σ_{i∈S} ‖∂ℓ(x_i)/∂W_c‖ over the sample
    G: list[float]  # [C−1] scale · η_c · grad_norm_sums
    delta: list[float]  # [C−1] ‖W_{c+1} − W_c‖
    cancellation: float  # Σ G / Σ Δ
    cosine: list[float]  # [C] expected gradient cosine similarity per checkpoint


@dataclasses.dataclass
class CancellationReport:
    steps: list[int]  # checkpoints analysed (C)
    learning_rates: list[float]
    num_examples: int  # sample size |S|
    population: int  # |D|
    split: str
    views: list[ViewResult]

    @property
    def scale(self) -> float:
        return self.population / self.num_examples

    def view(self, name: str) -> ViewResult:
        for v in self.views:
            if v.name == name:
                return v
        raise KeyError(f"no view {name!r}; have {[v.name for v in self.views]}")

    def to_json(self) -> dict:
        return {"steps": self.steps, "learning_rates": self.learning_rates,
                "num_examples": self.num_examples, "population": self.population,
                "split": self.split, "scale": self.scale,
                "views": [dataclasses.asdict(v) for v in self.views]}

    def markdown(self) -> str:
        lines = [f"Cancellation ratio C(W) = Σ_c G(W)_c / Σ_c ΔW_c over checkpoints "
                 f"{self.steps} (G over c = {self.steps[:-1]}), G estimated from {self.num_examples} "
                 f"of {self.population} `{self.split}` examples (×{self.scale:.4g}); "
                 f"cos = expected pairwise gradient cosine similarity at the last checkpoint.", "",
                 "| W | params | Σ_c G(W)_c | Σ_c ΔW_c | C(W) | cos |", "|---|---:|---:|---:|---:|---:|"]
        for v in self.views:
            lines.append(f"| {v.name} | {v.num_parameters:,} | {sum(v.G):.4g} | {sum(v.delta):.4g} | "
                         f"{v.cancellation:.4g} | {v.cosine[-1]:.3f} |")
        return "\n".join(lines) + "\n"


def analyze_checkpoints(model, params_at: Callable[[int], object], checkpoints: Sequence[tuple[int, float]],
                        encoded, rows: np.ndarray, *, population: int | None = None,
                        groups: Sequence[str] | None = None, split: str = "train", mesh=None,
                        chunk_size: int | None = None, rows_per_call: int | None = None,
                        progress: bool = False) -> CancellationReport:
    """C(W), G(W)_c, ΔW_c and gradient cosines of every view, over ``checkpoints``.

    Args:
      model: Flax module; params_at: ``step -> params``.
      checkpoints: ``[(step, η_c)]`` in training order (at least 2).
      encoded: ``EncodedDataset``; rows: the sample S (positions in ``encoded``).
      population: |D| the sample stands for (default ``len(encoded)``).
      groups: per-group views to report (default all; aggregates always).
    """
    checkpoints = sorted((int(s), float(lr)) for s, lr in checkpoints)
    if len(checkpoints) < 2:
        raise ValueError(f"ΔW_c needs at least 2 checkpoints, got {[s for s, _ in checkpoints]}")
    rows = np.asarray(rows, np.int64)
    population = len(encoded.labels) if population is None else int(population)
    if population < len(rows):
        raise ValueError(f"population {population} is smaller than the sample ({len(rows)} rows)")
    first = params_at(checkpoints[0][0])
    views = parameter_views(first, groups)
    flat = _flat(first)
    # Per-group views may include the word embedding, which the aggregates leave out.
    paths = sorted({p for v in views for p in v.paths})
    sizes = {p: int(np.prod(np.shape(flat[p]))) for p in paths}
    engine = ParamGradients(model, paths, mesh=mesh, chunk_size=chunk_size)

    stats, deltas, previous = [], [], None
    for i, (step, _) in enumerate(checkpoints):
        params = first if i == 0 else params_at(step)
        if progress:
            log.info("cancellation: checkpoint %d (%d/%d), %d examples", step, i + 1,
                     len(checkpoints), len(rows))
        stats.append(gradient_statistics(lambda r, p=params: engine.grads(p, encoded, r), rows,
                                         paths, sizes, views, rows_per_call))
        if previous is not None:
            deltas.append([parameter_change(previous, params, v.paths) for v in views])
        previous = params
    scale = population / len(rows)
    lrs = np.asarray([lr for _, lr in checkpoints[:-1]], np.float64)
    results = []
    for v_i, view in enumerate(views):
        sums = np.asarray([stats[c].norm_sums[v_i] for c in range(len(checkpoints) - 1)])
        delta = np.asarray([d[v_i] for d in deltas])
        results.append(ViewResult(
            name=view.name, group=view.group, kind=view.kind,
            num_parameters=int(sum(sizes[p] for p in view.paths)),
            grad_norm_sums=sums.tolist(), G=(scale * lrs * sums).tolist(), delta=delta.tolist(),
            cancellation=cancellation_ratio(scale * sums, lrs, delta),
            cosine=[float(s.cosines[v_i]) for s in stats]))
    return CancellationReport(steps=[s for s, _ in checkpoints],
                              learning_rates=[lr for _, lr in checkpoints],
                              num_examples=len(rows), population=population, split=split,
                              views=results)


def write_report(report: CancellationReport, out_dir: str | Path) -> dict[str, str]:
    """Writes ``cancellation.json``, ``cancellation.md`` and ``cancellation.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "cancellation.json", "markdown": out / "cancellation.md",
             "plot": out / "cancellation.png"}
    atomic_write_json(paths["json"], report.to_json())
    atomic_write_text(paths["markdown"], report.markdown())
    cancellation_bars(report, paths["plot"])
    return {k: str(v) for k, v in paths.items()}
