"""Power advisor: how many test points (and seeds) a sweep needs to tell two methods apart.

From a finished or pilot sweep, per test point t and seed s, the AUC-DEL± of each
method computed from that seed's runs alone (``mean_k removed[t, k, s] − baseline[t, s]``)
and, per pair of methods A, B and sign, the paired difference
``d(t, s) = AUC_A(t, s) − AUC_B(t, s)`` (the baseline cancels: both use seed s).

Variance components (one-way random effects, method of moments):
``d(t, s) = μ + u_t + e_ts`` with ``Var u = σ_T²`` (between test points: how much the
difference itself changes from one test point to another) and ``Var e = σ_S²`` (within a
test point, across seeds: retraining noise). ``σ_S²`` is the pooled within-test-point
variance (needs two seeds); ``σ_T² = max(0, Var_t d̄_t − σ_S² · mean_t 1/S_t)``. With one
seed only their sum is measured; planning for more seeds then assumes no gain from them
(an upper bound on the test points needed).

Test points needed to resolve a difference δ (two-sided level α, power 1 − β) with s
seeds per test point, normal approximation of the paired test over test points:

    σ_s² = σ_T² + σ_S² / s,      n = ⌈((z_{1−α/2} + z_{1−β}) · σ_s / δ)²⌉  (at least 2).

(The t-distribution would add about one or two test points when n is small.) Cost: a
test point takes ``methods × signs × k values × s`` retrainings, plus ``s`` baselines for
the whole sweep; hours use the mean measured ``wall_time_s`` of the result files (the
replica group's wall time over its size: the throughput of the machine that ran them).
LDS, mislabel and targeted-fixing jobs do not grow with the test points and are left out.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

import numpy as np
from scipy import stats

from tracin_jax.deletion.metrics import SweepData, _nanmean

APPROXIMATION = ("normal approximation of a two-sided paired test over test points: "
                 "n = ((z_{1−α/2} + z_{power}) · σ_s / δ)², σ_s² = σ_T² + σ_S²/s")


def variance_components(d: np.ndarray) -> dict:
    """σ_T (between test points) and σ_S (within a test point, across seeds) of ``d [T, S]``.

    Returns ``mean``, ``sigma_between``, ``sigma_within`` (None with fewer than two seeds
    on any test point), ``sigma_single`` (std over test points of a one-seed value, the sum
    of both components: measured directly with one seed), ``sigma_current`` (std over test
    points of the per-test-point mean at the sweep's seeds), ``test_points``, ``seeds``.
    Values are None where they cannot be estimated (fewer than two test points).
    """
    d = np.asarray(d, np.float64)
    finite = np.isfinite(d)
    keep = finite.any(axis=1)
    d, finite = d[keep], finite[keep]
    counts = finite.sum(axis=1)
    t = int(len(d))
    out = {"mean": None, "sigma_between": None, "sigma_within": None, "sigma_single": None,
           "sigma_current": None, "test_points": t, "seeds": int(counts.max()) if t else 0}
    if t == 0:
        return out
    means = _nanmean(d, axis=1)
    out["mean"] = float(means.mean())
    within = None
    multi = counts >= 2
    if multi.any():
        dev = np.where(finite, d - means[:, None], 0.0)[multi]
        within = float((dev ** 2).sum() / (counts[multi] - 1).sum())
        out["sigma_within"] = math.sqrt(within)
    if t < 2:
        return out
    var_means = float(means.var(ddof=1))
    out["sigma_current"] = math.sqrt(var_means)
    if within is None:
        out["sigma_single"] = math.sqrt(var_means)  # one seed: σ_T² + σ_S² together
        return out
    between = max(0.0, var_means - within * float(np.mean(1.0 / counts)))
    out["sigma_between"] = math.sqrt(between)
    out["sigma_single"] = math.sqrt(between + within)
    return out


def sigma_for_seeds(components: dict, seeds: int) -> float | None:
    """σ_s of the per-test-point mean over ``seeds`` seeds (upper bound ``sigma_single``
    when the within component was not measured)."""
    if components.get("sigma_within") is None or components.get("sigma_between") is None:
        return components.get("sigma_single")
    return math.sqrt(components["sigma_between"] ** 2 + components["sigma_within"] ** 2 / int(seeds))


def required_test_points(sigma: float, effect: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """``((z_{1−α/2} + z_{power}) · σ / δ)²`` (unrounded)."""
    if effect <= 0:
        raise ValueError(f"effect must be positive, got {effect}")
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError(f"alpha and power must be in (0, 1), got {alpha}, {power}")
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return float((z * sigma / effect) ** 2)


def power_at(sigma: float, effect: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired z test with n test points: ``Φ(δ√n/σ − z_{1−α/2})``
    (+ the other tail)."""
    if sigma <= 0:
        return 1.0
    shift = effect * math.sqrt(n) / sigma
    z = stats.norm.ppf(1 - alpha / 2)
    return float(stats.norm.cdf(shift - z) + stats.norm.cdf(-shift - z))


def advise(manifest: dict, results: dict[str, dict], effect: float = 0.05,
           seeds_options: Sequence[int] = (1, 2, 3, 5), alpha: float = 0.05, power: float = 0.8, *,
           jobs_per_test_seed: int | None = None, wall_time_s: float | None = None) -> dict:
    """Power advice from a sweep's manifest and finished results (module docstring).

    Args:
      manifest: the sweep manifest (``load_manifest``).
      results: finished results by job id (``runner.load_results``).
      effect: the AUC-DEL difference δ to resolve.
      seeds_options: seeds per test point to plan for.
      jobs_per_test_seed: retrainings per test point and seed of the planned sweep
        (default the pilot's: methods × signs × k values).
      wall_time_s: seconds per retraining for the cost (default: the mean measured
        ``wall_time_s`` of the result files; e.g. a plan's ``estimate["retrain_s"]``).
    Returns a dict: the settings, ``pairs`` (per sign and pair of methods: mean difference,
    components, power of the pilot's own design, and for each seeds option the σ, the
    test points needed, retrainings and hours), ``per_method`` (components of each method's
    own AUC-DEL), ``pooled`` per sign (root mean square of the pairs' components) and
    ``recommendation`` (the cheapest option for the pooled need of every sign).
    """
    return advise_data(SweepData(manifest, results), effect, seeds_options, alpha, power,
                       jobs_per_test_seed=jobs_per_test_seed, wall_time_s=wall_time_s)


def advise_data(data: SweepData, effect: float = 0.05, seeds_options: Sequence[int] = (1, 2, 3, 5),
                alpha: float = 0.05, power: float = 0.8, *, jobs_per_test_seed: int | None = None,
                wall_time_s: float | None = None) -> dict:
    """:func:`advise` on results already arranged as :class:`SweepData`."""
    auc = data.auc_per_seed()  # [T, M, G, S]
    m_count, g_count, k_count = len(data.methods), len(data.signs), len(data.k_grid)
    per_test_seed = int(jobs_per_test_seed) if jobs_per_test_seed else m_count * g_count * k_count
    walls = list(data.wall_time_s.values())
    wall = float(wall_time_s) if wall_time_s is not None else float(np.mean(walls)) if walls else None
    z_a, z_b = float(stats.norm.ppf(1 - alpha / 2)), float(stats.norm.ppf(power))
    seeds_options = sorted({int(s) for s in seeds_options if int(s) >= 1})

    def needed(components: dict) -> list[dict]:
        rows = []
        for s in seeds_options:
            sigma = sigma_for_seeds(components, s)
            if sigma is None:
                rows.append({"seeds": s, "sigma": None, "n_exact": None, "test_points": None,
                             "retrainings": None, "hours": None})
                continue
            n_exact = required_test_points(sigma, effect, alpha, power)
            n = max(2, math.ceil(n_exact - 1e-9))
            jobs = n * per_test_seed * s + s
            rows.append({"seeds": s, "sigma": sigma, "n_exact": n_exact, "test_points": n,
                         "retrainings": jobs, "hours": None if wall is None else jobs * wall / 3600.0})
        return rows

    pairs, pooled = [], {}
    order = method_pairs(data.methods)
    for gi, sign in enumerate(data.signs):
        comps = []
        for a, b in order:
            d = auc[:, a, gi, :] - auc[:, b, gi, :]
            c = variance_components(d)
            current = c["sigma_current"]
            entry = {"sign": sign, "a": data.methods[a], "b": data.methods[b], "mean_difference": c["mean"],
                     **{k: c[k] for k in ("sigma_between", "sigma_within", "sigma_single", "sigma_current",
                                          "test_points", "seeds")},
                     "power_now": None if current is None else power_at(current, effect, c["test_points"], alpha),
                     "needed": needed(c)}
            pairs.append(entry)
            comps.append(c)
        pooled[sign] = _pooled(comps)
        pooled[sign]["needed"] = needed(pooled[sign])
    methods = []
    for mi, method in enumerate(data.methods):
        for gi, sign in enumerate(data.signs):
            c = variance_components(auc[:, mi, gi, :])
            methods.append({"sign": sign, "method": method, "mean": c["mean"],
                            **{k: c[k] for k in ("sigma_between", "sigma_within", "sigma_single", "test_points")}})
    measured = [e for e in pairs if e["test_points"] >= 2]
    return {
        "effect": float(effect), "alpha": float(alpha), "power": float(power), "z_alpha": z_a, "z_power": z_b,
        "approximation": APPROXIMATION,
        "test_points": len(data.test_ids),
        "test_points_measured": max((e["test_points"] for e in pairs), default=0),
        "seeds": len(data.seeds), "methods": list(data.methods), "signs": list(data.signs),
        "k_grid": list(data.k_grid),
        "seed_component_measured": any(e["sigma_within"] is not None for e in measured),
        "retrainings_per_test_point_and_seed": per_test_seed,
        "wall_time_s_per_retraining": wall, "wall_time_results": 0 if wall_time_s is not None else len(walls),
        "seeds_options": seeds_options,
        "pairs": pairs, "per_method": methods, "pooled": pooled,
        "recommendation": _recommend(pooled, seeds_options),
    }


def advise_sweep(manifest_path: str | Path, **kwargs) -> dict:
    """:func:`advise` for a sweep directory (or its ``manifest.json``): reads the manifest and
    its finished results. For ``tracin-jax sweep plan --pilot SWEEP``."""
    from tracin_jax.deletion.plan import load_manifest
    from tracin_jax.deletion.runner import load_results

    manifest = load_manifest(manifest_path)
    job_ids = {j["id"] for j in manifest["jobs"]}
    results = {k: v for k, v in load_results(manifest["_dir"], manifest).items() if k in job_ids}
    return advise(manifest, results, **kwargs)


def available(advice_or_data) -> bool:
    """Whether the advice rests on at least two test points."""
    return int(advice_or_data.get("test_points_measured", 0)) >= 2


def method_pairs(methods: Sequence[str]) -> list[tuple[int, int]]:
    """Method index pairs (a, b) compared as ``a − b``: each method against ``random``
    (when present) first, then every other pair in the sweep's order."""
    rnd = [i for i, m in enumerate(methods) if m == "random"]
    others = [i for i, m in enumerate(methods) if m != "random"]
    return [(a, r) for r in rnd for a in others] + list(combinations(others, 2))


def _pooled(comps: list[dict]) -> dict:
    """Root mean square of the components over pairs (those that were measured)."""
    out = {}
    for key in ("sigma_between", "sigma_within", "sigma_single"):
        vals = [c[key] for c in comps if c.get(key) is not None]
        out[key] = math.sqrt(float(np.mean(np.square(vals)))) if vals else None
    if out["sigma_within"] is None or out["sigma_between"] is None:
        out["sigma_between"] = out["sigma_within"] = None  # only the sum is known
    out["pairs"] = len(comps)
    return out


def _recommend(pooled: dict, seeds_options: Sequence[int]) -> dict | None:
    """Cheapest seeds option (fewest retrainings) resolving the pooled need of every sign."""
    best = None
    for s in seeds_options:
        rows = [next(r for r in p["needed"] if r["seeds"] == s) for p in pooled.values()]
        if not rows or any(r["test_points"] is None for r in rows):
            continue
        n = max(r["test_points"] for r in rows)
        row = max(rows, key=lambda r: r["test_points"])
        candidate = {"seeds": s, "test_points": n, "retrainings": row["retrainings"], "hours": row["hours"]}
        if best is None or candidate["retrainings"] < best["retrainings"]:
            best = candidate
    return best


# ----------------------------------------------------------------------------- text

PAPER_SIGN = {"+": "AUC-DEL+", "-": "AUC-DEL−"}


def _f(x, spec=".3f") -> str:
    return "–" if x is None or not np.isfinite(x) else format(x, spec)


def render_markdown(advice: dict, names: dict | None = None) -> str:
    """``power.md``: the components, the test points needed per seeds option, the cost."""
    names = names or {}
    nm = lambda m: names.get(m, m)  # noqa: E731
    opts = advice["seeds_options"]
    lines = [f"# Power advice from {advice['test_points_measured']} test points × {advice['seeds']} "
             f"seed{'s' if advice['seeds'] != 1 else ''}", "",
             f"Test points needed to resolve an AUC-DEL difference of δ = {advice['effect']:g} between two "
             f"methods (two-sided α = {advice['alpha']:g}, power {advice['power']:g}); "
             f"{advice['approximation']}, z = {advice['z_alpha']:.3f} + {advice['z_power']:.3f}.",
             "σ_T: spread of the paired difference between test points; σ_S: across seeds within a test "
             "point (retraining noise); σ₁: both, a one-seed test point.", ""]
    if not advice["seed_component_measured"]:
        lines += ["One seed: σ_T and σ_S cannot be told apart; the counts for more seeds assume no gain "
                  "from them (an upper bound). A pilot with 2 seeds measures σ_S.", ""]
    header = ["metric", "A − B", "mean Δ", "σ_T", "σ_S", "σ₁", "power of this sweep"] + \
        [f"n ({s} seed{'s' if s != 1 else ''})" for s in opts]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in advice["pairs"]:
        cells = [PAPER_SIGN[e["sign"]], f"{nm(e['a'])} − {nm(e['b'])}", _f(e["mean_difference"], "+.3f"),
                 _f(e["sigma_between"]), _f(e["sigma_within"]), _f(e["sigma_single"]),
                 _f(e["power_now"], ".2f")] + [str(r["test_points"]) if r["test_points"] else "–"
                                               for r in e["needed"]]
        lines.append("| " + " | ".join(cells) + " |")
    for sign, p in advice["pooled"].items():
        cells = [PAPER_SIGN[sign], f"pooled ({p['pairs']} pairs, r.m.s.)", "", _f(p["sigma_between"]),
                 _f(p["sigma_within"]), _f(p["sigma_single"]), ""] + \
            [str(r["test_points"]) if r["test_points"] else "–" for r in p["needed"]]
        lines.append("| " + " | ".join(cells) + " |")
    wall = advice["wall_time_s_per_retraining"]
    lines += ["", f"Cost of the pooled need ({advice['retrainings_per_test_point_and_seed']} retrainings per test "
              f"point and seed, plus one baseline per seed; "
              + (f"{wall:.1f} s per retraining, the mean of {advice['wall_time_results']} result files)"
                 if wall is not None and advice["wall_time_results"] else
                 f"{wall:.1f} s per retraining, as given)" if wall is not None else
                 "no measured wall time in the result files)") + ":", "",
              "| seeds | test points | retrainings | retraining-hours |", "|---|---|---|---|"]
    for s in opts:
        rows = [next(r for r in p["needed"] if r["seeds"] == s) for p in advice["pooled"].values()]
        rows = [r for r in rows if r["test_points"] is not None]
        if not rows:
            lines.append(f"| {s} | – | – | – |")
            continue
        r = max(rows, key=lambda r: r["test_points"])
        lines.append(f"| {s} | {r['test_points']} | {r['retrainings']} | {_f(r['hours'], '.2f')} |")
    rec = advice.get("recommendation")
    if rec:
        lines += ["", f"Cheapest: {rec['test_points']} test points × {rec['seeds']} seed"
                  f"{'s' if rec['seeds'] != 1 else ''} ({rec['retrainings']} retrainings"
                  + (f", {rec['hours']:.2f} h" if rec["hours"] is not None else "") + ")."]
    return "\n".join(lines) + "\n"
