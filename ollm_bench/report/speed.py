"""Report sections for speed rows: decode steps at the roofline, and named measurements.

Decode rows are compared only with the baseline of the same machine, decode mode, context and batch
(never across modes). Each shows what a step must move, the achieved bandwidth and its fraction of
the copy bandwidth measured in the same process, and GPU busy time beside wall time, so a
launch-bound row is visible as one.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .plots import method_styles  # noqa: E402
from .tables import section  # noqa: E402

DECODE_KEY = ["model", "device", "decode_mode", "seq_len", "batch_size"]


def decode_summary(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[(df.status == "ok") & df.step_ms.notna()].sort_values("started_at")
    ok = ok.drop_duplicates(subset=DECODE_KEY + ["optim", "kernel"], keep="last").copy()
    base = ok[ok.optim == "baseline"].drop_duplicates(subset=DECODE_KEY, keep="last").set_index(DECODE_KEY)
    ratios = []
    for _, r in ok.iterrows():
        key = tuple(r[k] for k in DECODE_KEY)
        ratios.append(base.loc[key].step_ms / r.step_ms if key in base.index else float("nan"))
    ok["speedup"] = ratios
    return ok.sort_values(["model", "decode_mode", "seq_len", "batch_size", "optim"]).reset_index(drop=True)


def _g(x, fmt: str) -> str:
    return "" if pd.isna(x) else format(x, fmt)


def decode_table(s: pd.DataFrame) -> str:
    lines = ["| model | mode | context | batch | optim | kernel | step ms [p10, p90] | GPU busy ms | MB/step | "
             "GB/s | bw fraction | × baseline | n |", "|" + "---|" * 13]
    for _, r in s.iterrows():
        lines.append(
            f"| {r.model} | {r.decode_mode} | {int(r.seq_len)} | {int(r.batch_size)} | {r.optim} | {r.kernel} | "
            f"{r.step_ms:.3f} [{_g(r.step_ms_p10, '.3f')}, {_g(r.step_ms_p90, '.3f')}] | {_g(r.gpu_busy_ms, '.3f')} | "
            f"{_g(r.bytes_per_step / 1e6, '.1f')} | {_g(r.achieved_gbps, '.0f')} | {_g(r.bw_fraction, '.2f')} | "
            f"{_g(r.speedup, '.2f')} | {_g(r.n_repeats, '.0f')} |")
    return "\n".join(lines)


def plot_decode(s: pd.DataFrame, path: Path) -> bool:
    """Step time vs context per method (median, p10-p90 bars) with the bandwidth floor of the
    baseline's bytes (bytes_per_step / copy bandwidth), one panel per (model, mode, batch)."""
    panels = list(s.groupby(["model", "decode_mode", "batch_size"]))
    if not panels:
        return False
    styles = method_styles(s.optim + ":" + s.kernel.fillna("torch"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    for ax, ((model, mode, batch), g) in zip(axes[0], panels):
        for (optim, kernel), m in g.groupby(["optim", g.kernel.fillna("torch")]):
            m = m.sort_values("seq_len")
            st = styles[f"{optim}:{kernel}"]
            err = [m.step_ms - m.step_ms_p10.fillna(m.step_ms), m.step_ms_p90.fillna(m.step_ms) - m.step_ms]
            ax.errorbar(m.seq_len, m.step_ms, yerr=err, marker=st["marker"], color=st["color"], capsize=2,
                        label=f"{optim} ({kernel})")
            floor = m.bytes_per_step / (m.copy_gbps * 1e9) * 1e3
            if optim == "baseline" and floor.notna().any():
                ax.plot(m.seq_len, floor, color="k", ls="--", lw=0.8, label="bandwidth floor (baseline bytes)")
        ax.set(xscale="log", yscale="log", xlabel="context length (tokens)", ylabel="decode step (ms)",
               title=f"{model} · {mode} · batch {int(batch)}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


@section("decode")
def decode_section(df: pd.DataFrame, suite_dir: Path) -> list[str]:
    s = decode_summary(df)
    if s.empty:
        return []
    s.to_csv(suite_dir / "decode_summary.csv", index=False)
    lines = ["## Decode step at the roofline", "",
             "One decode step (one token per sequence) timed with CUDA events over repeated steps; `graph`: the step "
             "captured once in a CUDA graph over preallocated buffers and replayed, no host sync inside; `eager`: "
             "Python-driven forward (compare only within a mode). MB/step: weights + KV (codes, scales, zero-points, "
             "windows) one step must read; bw fraction: achieved GB/s over the device-to-device copy bandwidth measured "
             "in the same process. × baseline: baseline step time / this step time, same machine, mode, context, "
             "batch.", "", decode_table(s), ""]
    if plot_decode(s, suite_dir / "decode_step_vs_context.png"):
        lines += ["![decode step vs context](decode_step_vs_context.png)", ""]
    return lines


def metric_table(df: pd.DataFrame) -> str:
    ok = df[(df.status == "ok") & df.metric.notna()].sort_values("started_at")
    ok = ok.drop_duplicates(subset=["model", "device", "optim", "seq_len", "batch_size", "metric"], keep="last")
    lines = ["| optim | metric | context | batch | median [p10, p90] | unit | n | device |", "|---|---|---|---|---|---|---|---|"]
    for _, r in ok.iterrows():
        lines.append(f"| {r.optim} | {r.metric} | {int(r.seq_len)} | {int(r.batch_size)} | {r.metric_value:.4g} "
                     f"[{_g(r.metric_p10, '.4g')}, {_g(r.metric_p90, '.4g')}] | {r.metric_unit} | "
                     f"{_g(r.metric_n, '.0f')} | {r.device} |")
    return "\n".join(lines)


def _metric_section(title: str):
    def build(df: pd.DataFrame, suite_dir: Path) -> list[str]:
        return [f"## {title}", "", metric_table(df), ""]

    return build


section("attention")(_metric_section("Attention kernels and prefill"))
section("memory")(_metric_section("Allocator workloads"))
