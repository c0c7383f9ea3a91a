"""Tables and plots from stored rows: `results/<suite>/report.md`, `summary.csv` and PNGs.

Every quality delta is paired (same documents, baseline vs method) with a bootstrap CI over
documents, and carries DESIGN.md's gate verdict; every speed number carries its n and spread.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .errors import StoreError  # noqa: E402
from .quality import bootstrap_ratio_ci, gate_verdict  # noqa: E402
from .store import ResultStore  # noqa: E402

KEY = ["model", "content", "seq_len", "seed", "batch_size"]
BASELINE = "baseline"


def latest_ok(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[df.status == "ok"].sort_values("started_at")
    return ok.drop_duplicates(subset=KEY + ["optim"], keep="last")


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, content, seq_len, seed, optim) with deltas against the baseline."""
    ok = latest_ok(df)
    if ok.empty:
        raise StoreError("no ok rows to report")
    base = ok[ok.optim == BASELINE].set_index(KEY)
    if base.empty:
        raise StoreError("no baseline rows: run optim=baseline for the same model/content/length first")
    out = []
    for _, r in ok.iterrows():
        key = tuple(r[k] for k in KEY)
        b = base.loc[key] if key in base.index else None
        row = {k: r[k] for k in KEY} | {
            "optim": r.optim, "peer": r.peer, "device": r.device, "n_docs": r.n_docs, "ppl": r.ppl,
            "ppl_ci_low": r.ppl_ci_low, "ppl_ci_high": r.ppl_ci_high, "kv_ratio": r.kv_ratio,
            "kv_mib": r.kv_bytes / 2**20, "prefill_tok_s": r.prefill_tok_s, "decode_tok_s": r.decode_tok_s,
            "decode_tok_s_spread": r.decode_tok_s_spread, "ttft_s": r.ttft_s, "n_repeats": r.n_repeats,
        }
        if b is not None:
            row["prefill_ratio"] = r.prefill_tok_s / b.prefill_tok_s
            row["decode_ratio"] = r.decode_tok_s / b.decode_tok_s
            row["kv_vs_baseline"] = r.kv_bytes / b.kv_bytes
            if r.doc_nll and b.doc_nll and len(r.doc_nll) == len(b.doc_nll):
                n_tok = [r.scored_tokens] * len(r.doc_nll)
                point, lo, hi = bootstrap_ratio_ci(r.doc_nll, b.doc_nll, n_tok)
                row.update(ppl_delta=point, ppl_delta_low=lo, ppl_delta_high=hi, gate=gate_verdict(lo, hi))
        out.append(row)
    return pd.DataFrame(out).sort_values(["model", "content", "seq_len", "optim"]).reset_index(drop=True)


def _pct(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:+.2f}%"


def _num(x, fmt: str) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def markdown_table(summary: pd.DataFrame) -> str:
    head = ("| content | len | optim | ppl [95% CI] | Δppl vs base [95% CI] | gate | KV / 16-bit | "
            "prefill × | decode × | decode tok/s (range) | n |")
    lines = [head, "|" + "---|" * 11]
    for _, r in summary.iterrows():
        delta = "" if pd.isna(r.get("ppl_delta")) else (
            f"{_pct(r.ppl_delta)} [{_pct(r.ppl_delta_low)}, {_pct(r.ppl_delta_high)}]")
        ppl = "" if pd.isna(r.ppl) else f"{r.ppl:.3f} [{r.ppl_ci_low:.3f}, {r.ppl_ci_high:.3f}]"
        lines.append(
            f"| {r.content} | {r.seq_len} | {r.optim}{' (peer)' if r.peer in (True, 'True') else ''} | {ppl} | "
            f"{delta} | {r.get('gate', '') if not pd.isna(r.get('gate')) else ''} | {_num(r.kv_ratio, '.3f')} | "
            f"{_num(r.get('prefill_ratio'), '.2f')} | {_num(r.get('decode_ratio'), '.2f')} | "
            f"{_num(r.decode_tok_s, '.1f')} (±{_num(r.decode_tok_s_spread / 2, '.1f')}) | {int(r.n_repeats)} |"
        )
    return "\n".join(lines)


def plot_quality_vs_bytes(summary: pd.DataFrame, path: Path) -> None:
    contents = sorted(summary.content.unique())
    fig, axes = plt.subplots(1, len(contents), figsize=(4 * len(contents), 3.5), squeeze=False)
    for ax, content in zip(axes[0], contents):
        part = summary[(summary.content == content) & summary.ppl.notna()]
        for optim, g in part.groupby("optim"):
            y = 100 * g.get("ppl_delta", pd.Series([0.0] * len(g), index=g.index)).fillna(0)
            ax.scatter(g.kv_ratio, y, label=optim)
            for _, r in g.iterrows():
                ax.annotate(str(r.seq_len), (r.kv_ratio, 100 * (r.get("ppl_delta") or 0)), fontsize=7)
        ax.axhline(2.0, color="red", lw=0.8, ls="--")
        ax.set(title=content, xlabel="KV bytes / 16-bit cache", ylabel="Δ perplexity vs baseline (%)")
    if axes[0][-1].get_legend_handles_labels()[0]:
        axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_speed_vs_length(summary: pd.DataFrame, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    agg = summary.groupby(["optim", "seq_len"])[["prefill_tok_s", "decode_tok_s"]].median().reset_index()
    for optim, g in agg.groupby("optim"):
        axes[0].plot(g.seq_len, g.prefill_tok_s, marker="o", label=optim)
        axes[1].plot(g.seq_len, g.decode_tok_s, marker="o", label=optim)
    axes[0].set(xscale="log", xlabel="sequence length", ylabel="prefill tokens/s", title="prefill")
    axes[1].set(xscale="log", xlabel="context length", ylabel="decode tokens/s", title="decode")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(suite_dir: Path) -> Path:
    suite_dir = Path(suite_dir)
    store_path = suite_dir / "runs.csv"
    if not store_path.exists():
        raise StoreError(f"no results at {store_path}: run `python -m ollm_bench sweep suite={suite_dir.name}` first")
    df = ResultStore(store_path).read()
    summary = summarize(df)
    summary.to_csv(suite_dir / "summary.csv", index=False)
    plot_quality_vs_bytes(summary, suite_dir / "quality_vs_kv_bytes.png")
    plot_speed_vs_length(summary, suite_dir / "speed_vs_length.png")
    failed = df[df.status != "ok"]
    devices = ", ".join(sorted(df.device.dropna().unique()))
    versions = ", ".join(sorted({f"torch {a} / transformers {b}" for a, b in zip(df.torch_version, df.transformers_version)}))
    lines = [
        f"# ollm_bench report: suite `{suite_dir.name}`",
        "",
        f"{len(df)} stored rows ({(df.status == 'ok').sum()} ok, {len(failed)} not ok). Device: {devices}. {versions}.",
        "",
        "Perplexity is scored with the method's cache in the loop (chunked prefill, last `scored_tokens` of each "
        "document predicted from the cache). Δppl = ppl_method / ppl_baseline - 1 on the same documents, 95% paired "
        "bootstrap CI over documents; gate: pass if the CI's upper end ≤ 2%, fail if its lower end > 2%, else "
        "inconclusive. KV / 16-bit: exact bytes of every stored tensor over the same tokens in a plain 16-bit cache "
        "(the fp32 baseline holds 2.0). Speed ratios are against the baseline of the same run grid; decode tok/s is "
        "the median over documents (n) with ± half its range.",
        "",
        markdown_table(summary),
        "",
        "![quality vs KV bytes](quality_vs_kv_bytes.png)",
        "![speed vs length](speed_vs_length.png)",
    ]
    if len(failed):
        lines += ["", "## Runs that did not succeed", "", "| optim | content | len | status | error |", "|---|---|---|---|---|"]
        lines += [f"| {r.optim} | {r.content} | {r.seq_len} | {r.status} | {str(r.error)[:160]} |" for _, r in failed.iterrows()]
    out = suite_dir / "report.md"
    out.write_text("\n".join(lines) + "\n")
    return out
