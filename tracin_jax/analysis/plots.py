"""Figures of the analyses (matplotlib, Agg backend: files only, no display needed)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def cancellation_bars(report, path: str | Path) -> Path:
    """Two panels: C(W) per view (log scale; weights blue, biases orange) and the
    expected gradient cosine similarity of each weight view at the last checkpoint."""
    plt = _pyplot()
    views = report.views
    names = [v.name for v in views]
    colors = ["tab:orange" if v.kind == "bias" else "tab:blue" for v in views]
    ratios = np.asarray([v.cancellation for v in views], np.float64)
    finite = np.where(np.isfinite(ratios) & (ratios > 0), ratios, np.nan)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8.0, 0.7 * len(views) + 4), 4.2))
    ax1.bar(range(len(views)), np.nan_to_num(finite, nan=0.0), color=colors)
    if np.any(np.isfinite(finite)):
        ax1.set_yscale("log")
    ax1.set_xticks(range(len(views)), names, rotation=60, ha="right", fontsize=8)
    ax1.set_ylabel("cancellation ratio C(W)  (log)")
    ax1.set_title("C(W) = Σ G(W)_c / Σ ΔW_c")
    from matplotlib.patches import Patch
    ax1.legend(handles=[Patch(color="tab:blue", label="weights"), Patch(color="tab:orange", label="biases")],
               fontsize=8)
    weights = [v for v in views if v.kind == "weight"]
    ax2.bar(range(len(weights)), [v.cosine[-1] for v in weights], color="tab:blue")
    ax2.set_xticks(range(len(weights)), [v.name for v in weights], rotation=60, ha="right", fontsize=8)
    ax2.axhline(0.0, color="black", linewidth=0.6)
    ax2.set_ylabel("E cos(∂ℓ(a)/∂W, ∂ℓ(b)/∂W)")
    ax2.set_title(f"gradient cosine similarity (step {report.steps[-1]})")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def deletion_curves(ks: Sequence[int], curves: Mapping[str, Mapping[str, Sequence[float]]],
                    path: str | Path, title: str = "") -> Path:
    """DEL+ / DEL− against k, one line per method: ``curves[method]["del_plus"|"del_minus"]``."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for method, c in curves.items():
        for ax, key in zip(axes, ("del_plus", "del_minus")):
            if key in c:
                ax.plot(ks, c[key], marker="o", label=method)
    axes[0].set_title("remove top-k proponents: DEL+ (lower is better)")
    axes[1].set_title("remove top-k opponents: DEL− (higher is better)")
    for ax in axes:
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_xlabel("k (training examples removed)")
        ax.set_ylabel("Δ p(ground-truth class)")
    axes[1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
