"""Regenerate the result tables inside README's "Latest results" block from the stored rows.

    python -m ollm_bench.report.readme_tables [--results results] [--readme README.md]

Each table sits between `<!-- NAME:start -->` and `<!-- NAME:end -->`; the prose around them
(commands, devices, caveats) is written by hand. Quality tables put the models side by side (one
column group per model); speed tables keep each machine and decode mode apart.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from ..errors import StoreError
from ..run.store import ResultStore
from .quality import delta_text, name_text, verdict_text
from .speed import decode_summary
from .tables import suite_summary


def _rows(results: Path, suite: str) -> pd.DataFrame | None:
    path = results / suite / "runs.csv"
    if not path.exists():
        return None
    df = ResultStore(path).read()
    return df if (df.status == "ok").any() else None


def _quality(results: Path, suite: str) -> tuple[pd.DataFrame, pd.DataFrame] | str:
    """(rows, quality summary) of a suite, or the line a table shows in their place."""
    df = _rows(results, suite)
    if df is None:
        return f"No rows in results/{suite} yet."
    try:
        return df, suite_summary(df, results / suite)[0]
    except StoreError as exc:
        return f"No quality rows in results/{suite}: {exc}"


def side_by_side(results: Path, suite: str, lengths=None) -> str:
    """One row per (method, content, length); per model: Δppl [95% CI], gate, KV / 16-bit, n."""
    got = _quality(results, suite)
    if isinstance(got, str):
        return got
    s = got[1]
    s = s[s.optim != "baseline"]
    if lengths:
        s = s[s.seq_len.isin(lengths)]
    if s.empty:  # a table of models needs a method beside the baseline
        return f"Only baseline rows in results/{suite} yet."
    models = sorted(s.model.unique())
    head = "| method | content | len | " + " | ".join(f"{m}: Δppl [95% CI] | gate | KV/16-bit | n" for m in models) + " |"
    lines = [head, "|" + "---|" * (3 + 4 * len(models))]
    for (label, content, seq_len), g in s.groupby(["label", "content", "seq_len"], sort=True):
        cells = []
        for m in models:
            r = g[g.model == m]
            if r.empty:
                cells += ["", "", "", ""]
                continue
            r = r.iloc[-1]
            cells += [delta_text(r), verdict_text(r), f"{r.kv_ratio_16bit:.3f}", str(int(r.n_docs))]
        lines.append(f"| {name_text(g.iloc[0])} | {content} | {int(seq_len)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def peers_table(results: Path, suite: str = "kv") -> str:
    """Per cell and peer: the best method of ours at no more bytes, paired against the peer."""
    from .peers import peer_comparison, table_lines

    got = _quality(results, suite)
    if isinstance(got, str):
        return got
    table = peer_comparison(*got)
    return "\n".join(table_lines(table)) if len(table) else f"No peer rows in results/{suite} yet."


def kv_gpu_table(results: Path) -> str:
    df = _rows(results, "kv_gpu")
    if df is None:
        return "No rows in results/kv_gpu yet."
    s = decode_summary(df)
    lines = ["| device | mode | method | kernel | context | batch | step ms [p10, p90] | bw fraction | × baseline | "
             "KV / 16-bit |", "|" + "---|" * 10]
    for _, r in s.iterrows():
        kv = r.kv_bytes / r.kv_bytes_16bit if r.kv_bytes_16bit else float("nan")
        lines.append(f"| {r.device} | {r.decode_mode} | {r.label} | {r.kernel} | {int(r.seq_len)} | {int(r.batch_size)} | "
                     f"{r.step_ms:.2f} [{r.step_ms_p10:.2f}, {r.step_ms_p90:.2f}] | {r.bw_fraction:.2f} | "
                     f"{r.speedup:.2f} | {kv:.3f} |")
    return "\n".join(lines)


def metric_table(results: Path, suite: str, metric: str, reference: str) -> str:
    df = _rows(results, suite)
    if df is None:
        return f"No rows in results/{suite} yet."
    ok = df[(df.status == "ok") & (df.metric == metric)].sort_values("started_at")
    ok = ok.drop_duplicates(subset=["model", "device", "optim", "seq_len"], keep="last")
    if ok.empty:
        return f"No `{metric}` rows in results/{suite} yet."
    lens = sorted(ok.seq_len.unique())
    lines = [f"| model | device | method | " + " | ".join(f"{n // 1024}k ms" for n in lens) + f" | × {reference} "
             "(longest shared context) |", "|" + "---|" * (len(lens) + 4)]
    for (model, device, optim), g in ok.groupby(["model", "device", "optim"]):
        g = g.set_index("seq_len")
        ref = ok[(ok.model == model) & (ok.device == device) & (ok.optim == reference)].set_index("seq_len")
        cells = [f"{g.metric_value[n]:.3f}" if n in g.index else "" for n in lens]
        shared = sorted(set(g.index) & set(ref.index))
        ratio = f"{ref.metric_value[shared[-1]] / g.metric_value[shared[-1]]:.2f} ({shared[-1] // 1024}k)" if shared else ""
        lines.append(f"| {model} | {device} | {optim} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def tables(results: Path) -> dict[str, str]:
    return {
        "kv-table": side_by_side(results, "kv", [2048, 8192, 16384]),
        "kv-peers-table": peers_table(results),
        "attn-table": side_by_side(results, "attention"),
        "default-table": side_by_side(results, "default"),
        "kv-gpu-table": kv_gpu_table(results),
        "attn-gpu-table": metric_table(results, "attention_gpu", "kernel_prefill_ms", "attn_full"),
        "attn-gpu-decode-table": metric_table(results, "attention_gpu", "kernel_decode_ms", "attn_full"),
        "attn-gpu-model-table": metric_table(results, "attention_gpu", "model_prefill_ms", "attn_full"),
    }


def main(argv: list[str] | None = None) -> None:
    from ..cli import replace_readme_block

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results", type=Path)
    ap.add_argument("--readme", default="README.md", type=Path)
    args = ap.parse_args(argv)
    built = tables(args.results)
    for name, body in built.items():
        replace_readme_block(args.readme, name, body)
    print(f"[ollm_bench] README tables regenerated: {', '.join(built)}")


if __name__ == "__main__":
    main()
