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


def ratio_to(ok: pd.DataFrame, key: list[str], reference: str, column: str) -> list[float]:
    """Per row: the reference method's `column` in the row's `key` cell / the row's own (NaN where
    the cell has no reference row). Every column compared this way is lower-is-better."""
    base = ok[ok.optim == reference].drop_duplicates(subset=key, keep="last").set_index(key)[column]
    return [base.get(tuple(r[k] for k in key), float("nan")) / r[column] for _, r in ok.iterrows()]


FUSED_GRAPH = "graph+fused"  # graph mode whose step ran the model's norms/MLP/rotary compiled (fused)


def mode_label(row) -> str:
    """The decode mode a row is compared within: a graph step captured with fused pointwise kernels
    (`extra.fused_pointwise`) is its own mode, never set against an unfused graph step."""
    extra = row.extra if isinstance(row.extra, dict) else {}
    return FUSED_GRAPH if row.decode_mode == "graph" and extra.get("fused_pointwise") else row.decode_mode


def decode_summary(df: pd.DataFrame) -> pd.DataFrame:
    from ..methods import configured_params
    from .quality import config_label, method_params

    ok = df[(df.status == "ok") & df.step_ms.notna()].sort_values("started_at").copy()
    if len(ok):
        ok["decode_mode"] = [mode_label(r) for r in ok.itertuples()]
        configured = {o: configured_params(o) for o in ok.optim.unique()}  # one YAML read per method
        ok["label"] = [config_label(r.optim, method_params(r), configured[r.optim]) for r in ok.itertuples()]
    else:
        ok["label"] = ok.optim
    ok = ok.drop_duplicates(subset=DECODE_KEY + ["label", "kernel"], keep="last").copy()
    ok["speedup"] = ratio_to(ok, DECODE_KEY, "baseline", "step_ms")
    # The prefill share a compressing store pays for quantizing on write: its prefill against the
    # 16-bit store's (baseline) of the same machine, mode, context, batch and kernel.
    share = 1 - pd.Series(ratio_to(ok, DECODE_KEY + ["kernel"], "baseline", "prefill_ms"), index=ok.index)
    ok["quantize_share"] = share.where(ok.optim != "baseline")
    return ok.sort_values(["model", "device", "decode_mode", "seq_len", "batch_size", "optim"]).reset_index(drop=True)


def _g(x, fmt: str) -> str:
    return "" if pd.isna(x) else format(x, fmt)


def decode_table(s: pd.DataFrame) -> str:
    lines = ["| model | device | mode | context | batch | optim | kernel | step ms [p10, p90] | GPU busy ms | MB/step | "
             "GB/s | bw fraction | × baseline | n |", "|" + "---|" * 14]
    for _, r in s.iterrows():
        lines.append(
            f"| {r.model} | {str(r.device).replace('NVIDIA ', '')} | {r.decode_mode} | {int(r.seq_len)} | {int(r.batch_size)} | "
            f"{r.label} | {r.kernel} | "
            f"{r.step_ms:.3f} [{_g(r.step_ms_p10, '.3f')}, {_g(r.step_ms_p90, '.3f')}] | {_g(r.gpu_busy_ms, '.3f')} | "
            f"{_g(r.bytes_per_step / 1e6, '.1f')} | {_g(r.achieved_gbps, '.0f')} | {_g(r.bw_fraction, '.2f')} | "
            f"{_g(r.speedup, '.2f')} | {_g(r.n_repeats, '.0f')} |")
    return "\n".join(lines)


def plot_decode(s: pd.DataFrame, path: Path) -> bool:
    """Step time vs context per method (median, p10-p90 bars) with the bandwidth floor of the
    baseline's bytes (bytes_per_step / copy bandwidth), one panel per (model, device, mode, batch),
    four panels a row."""
    panels = list(s.groupby(["model", "device", "decode_mode", "batch_size"]))
    if not panels:
        return False
    styles = method_styles(s.optim + ":" + s.kernel.fillna("torch"))
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, ((model, device, mode, batch), g) in zip(axes.flat, panels):
        for (optim, kernel), m in g.groupby(["optim", g.kernel.fillna("torch")]):
            m = m.sort_values("seq_len")
            st = styles[f"{optim}:{kernel}"]
            err = [m.step_ms - m.step_ms_p10.fillna(m.step_ms), m.step_ms_p90.fillna(m.step_ms) - m.step_ms]
            ax.errorbar(m.seq_len, m.step_ms, yerr=err, marker=st["marker"], color=st["color"], capsize=2,
                        label=f"{optim} ({kernel})")
            floor = m.bytes_per_step / (m.copy_gbps * 1e9) * 1e3
            if optim == "baseline" and floor.notna().any():
                ax.plot(m.seq_len, floor, color="k", ls="--", lw=0.8, label="bandwidth floor (baseline bytes)")
        ax.set(xscale="log", yscale="log", xlabel="context length (tokens)",
               ylabel="one layer's decode attention (ms)" if mode == "kernel" else "decode step (ms)",
               title=f"{model} · {str(device).replace('NVIDIA ', '')}\n{mode} · batch {int(batch)}")
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


METRIC_KEY = ["model", "device", "metric", "seq_len", "batch_size"]
REFERENCE = {"attention": "attn_full", "memory": "torch_caching"}  # scenario -> the method rows are compared with


def metric_summary(df: pd.DataFrame, reference: str) -> pd.DataFrame:
    ok = df[(df.status == "ok") & df.metric.notna()].sort_values("started_at")
    ok = ok.drop_duplicates(subset=METRIC_KEY + ["optim"], keep="last").copy()
    ok["vs_reference"] = ratio_to(ok, METRIC_KEY, reference, "metric_value")
    return ok.sort_values(["model", "device", "metric", "seq_len", "optim"]).reset_index(drop=True)


def metric_table(df: pd.DataFrame, reference: str, notes: tuple[str, ...] = ()) -> str:
    """One row per (model, optim, metric, context): median [p10, p90], × reference (reference / this: all
    these metrics are lower-is-better, so > 1 beats it), and the `extra` entries named in `notes`."""
    s = metric_summary(df, reference)
    lines = [f"| model | optim | metric | context | batch | median [p10, p90] | unit | × {reference} | n | "
             f"{' | '.join(notes)}{' | ' if notes else ''}device |", "|" + "---|" * (10 + len(notes))]
    for _, r in s.iterrows():
        extra = r.extra if isinstance(r.extra, dict) else {}
        cells = "".join(f"{_note(extra.get(k))} | " for k in notes)
        lines.append(f"| {r.model} | {r.optim} | {r.metric} | {int(r.seq_len)} | {int(r.batch_size)} | {r.metric_value:.4g} "
                     f"[{_g(r.metric_p10, '.4g')}, {_g(r.metric_p90, '.4g')}] | {r.metric_unit} | "
                     f"{_g(r.vs_reference, '.2f')} | {_g(r.metric_n, '.0f')} | {cells}{r.device} |")
    return "\n".join(lines)


def _note(value) -> str:
    return "" if value is None else format(value, ".3g") if isinstance(value, float) else str(value)


def _metric_section(scenario: str, title: str, text: str, notes: tuple[str, ...]):
    def build(df: pd.DataFrame, suite_dir: Path) -> list[str]:
        return [f"## {title}", "", text, "", metric_table(df, REFERENCE[scenario], notes), ""]

    section(scenario)(build)


_metric_section(
    "attention", "Attention kernels and prefill",
    "CUDA-event times, median [p10, p90] over n calls after a warm-up that includes compilation. kernel_prefill_ms: "
    "one attention layer's causal prefill at the model's dims; kernel_decode_ms: 1 query vs `context` keys; "
    "model_prefill_ms: the model's first layers (extra.layers_note), the method attached. × attn_full: the "
    "flash-SDPA reference's time / this time, same metric and context. density: share of causal (query, key) pairs "
    "a mechanism keeps.", ("backend", "density", "mask_build_ms"))
_metric_section(
    "memory", "Allocator workloads",
    "fragmentation: 1 - live/reserved sampled after every step of a varied-length serving workload; alloc_us/<mix>: "
    "host microseconds per get+put of one step's requests; alloc_time_per_step_us: host time inside allocator calls "
    "per step of a synthetic decode loop (alloc_share: of the step's time). × torch_caching: PyTorch's caching "
    "allocator (default setting) / this, same metric and context.",
    ("pool_hit_rate", "alloc_share", "expandable_segments"))
