"""Plots from summaries: quality vs KV bytes (the Pareto picture) and decode step time vs context.

Both are meant to read at a glance: one fixed colour and marker per method across every panel,
intervals as error bars, the 2 % gate (or the bandwidth floor) drawn, and an axis that keeps the
interesting range visible (symlog for perplexity changes, which span -1 % to +10,000 %).
"""

from __future__ import annotations

from itertools import cycle
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

MARKERS = "osD^v<>pPX*hH8d"
GATE_PCT = 2.0


def method_styles(names) -> dict[str, dict]:
    """A distinct (colour, marker) per method name, stable across panels and figures."""
    colours = plt.get_cmap("tab20").colors
    styles, markers = {}, cycle(MARKERS)
    for i, name in enumerate(sorted(set(names))):
        styles[name] = {"color": colours[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20], "marker": next(markers)}
    return styles


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten in both bytes and Δppl (lower is better on both), by increasing bytes."""
    front, best = [], np.inf
    for x, y in sorted(points):
        if y < best:
            front.append((x, y))
            best = y
    return front


def plot_quality_vs_bytes(summary: pd.DataFrame, path: Path, seq_len: int) -> bool:
    """One panel per (model, content) at `seq_len`: Δppl (%) vs KV bytes / 16-bit, front drawn."""
    part = summary[(summary.seq_len == seq_len) & summary.ppl_delta.notna() & (summary.optim != "baseline")] \
        if "ppl_delta" in summary else summary.iloc[0:0]
    if part.empty:
        return False
    models, contents = sorted(part.model.unique()), sorted(part.content.unique())
    styles = method_styles(summary.optim)
    fig, axes = plt.subplots(len(models), len(contents), figsize=(3.6 * len(contents), 3.4 * len(models)),
                             squeeze=False, sharey=True, sharex=True)
    # One x range for every panel from 0 (a lone point would otherwise get a sliver of an axis).
    # x: bytes as a 16-bit deployment holds them (fp32 tensors of the CPU rows at 16 bits), as in the
    # peers table.
    axes[0][0].set_xlim(0, 1.08 * float(part.kv_ratio_16bit.max()))
    for i, model in enumerate(models):
        for j, content in enumerate(contents):
            ax = axes[i][j]
            cell = part[(part.model == model) & (part.content == content)]
            for _, r in cell.iterrows():
                y = 100 * r.ppl_delta
                err = None
                if not (pd.isna(r.ppl_delta_low) or pd.isna(r.ppl_delta_high)):
                    err = [[y - 100 * r.ppl_delta_low], [100 * r.ppl_delta_high - y]]
                label = f"{r.label} (peer)" if r.peer else r.label
                # A configured variant (`kv_k4v4(residual=64)`) keeps its method's colour and marker,
                # drawn hollow, so it is told apart from the registered configuration.
                variant = r.label != r.optim
                ax.errorbar(r.kv_ratio_16bit, y, yerr=err, fmt=styles[r.optim]["marker"], color=styles[r.optim]["color"],
                            mfc="white" if variant else styles[r.optim]["color"], ms=6, capsize=2, label=label)
            front = pareto_front(list(zip(cell.kv_ratio_16bit, 100 * cell.ppl_delta)))
            if len(front) > 1:
                ax.step(*zip(*front), where="post", color="0.4", lw=0.8, ls=":", label="Pareto front")
            ax.axhline(GATE_PCT, color="red", lw=0.8, ls="--", label="2 % gate")
            ax.axhline(0, color="0.7", lw=0.6)
            ax.set_yscale("symlog", linthresh=GATE_PCT, linscale=1.5)
            ax.set_title(f"{model} · {content}", fontsize=9)
            ax.set_xlabel("KV bytes / 16-bit cache")
            if j == 0:
                ax.set_ylabel("Δ perplexity vs baseline (%)")
            ax.grid(alpha=0.3, which="both")
    handles, labels = {}, []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    fig.legend([handles[lab] for lab in labels], labels, loc="lower center", ncol=min(6, len(labels)), fontsize=7,
               frameon=False)
    fig.suptitle(f"Quality vs KV bytes at {seq_len} tokens (hollow: a configured variant of the method)", fontsize=10)
    fig.tight_layout(rect=(0, 0.04 + 0.02 * (len(labels) // 6), 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
