"""Regenerate the result tables inside README's "Latest results" block from the stored results.

    python -m ollm_bench.report.readme_tables [--results results] [--readme README.md]

Each table sits between `<!-- NAME:start -->` and `<!-- NAME:end -->`; the prose around them
(commands, devices, caveats) is written by hand. Tables: `kv-table` (suite=kv, 2048 and 8192
tokens), `kv-gpu-table`, `attn-gpu-table` (kernels), `attn-table` (suite=attention quality).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from ..cli import replace_readme_block


def _pct(point: float, low: float, high: float) -> str:
    return f"{100 * point:+.2f}% [{100 * low:+.2f}, {100 * high:+.2f}]"


def _name(row) -> str:
    return f"{row.optim} (peer)" if str(row.peer).lower() in ("true", "1") else row.optim


def kv_table(results: Path) -> str:
    s = pd.read_csv(results / "kv" / "summary.csv")
    s = s[(s.optim != "baseline") & s.seq_len.isin([2048, 8192])].sort_values(["optim", "seq_len", "content"])
    lines = ["| optim | content | len | Δppl [95% CI] | gate | KV / 16-bit |", "|---|---|---|---|---|---|"]
    lines += [f"| {_name(r)} | {r.content} | {r.seq_len} | {_pct(r.ppl_delta, r.ppl_delta_low, r.ppl_delta_high)} "
              f"| {r.gate} | {r.kv_ratio:.3f} |" for r in s.itertuples()]
    return "\n".join(lines)


def kv_gpu_table(results: Path) -> str:
    d = pd.read_csv(results / "kv_gpu" / "kv_gpu.csv")
    d = d[d.status == "ok"]
    base = d[d.method == "baseline"].set_index(["context", "batch"]).decode_tok_s
    cells = [(c, b) for c in sorted(d.context.unique()) for b in sorted(d.batch.unique())]
    head = " | ".join(f"{c // 1024}k b{b}" for c, b in cells)
    last = cells[-1]  # the longest context at the largest batch: where KV bytes matter most
    lines = [f"| method | {head} | KV / 16-bit at {last[0] // 1024}k b{last[1]} |", "|" + "---|" * (len(cells) + 2)]
    for method, g in d.groupby("method"):
        g = g.set_index(["context", "batch"])
        ratios = " | ".join(f"{g.decode_tok_s[c] / base[c]:.2f}x" if c in g.index else "" for c in cells)
        kv = f"{g.kv_ratio[last]:.3f}" if last in g.index else ""
        lines.append(f"| {method} | {ratios} | {kv} |")
    return "\n".join(lines)


def attn_gpu_table(results: Path) -> str:
    d = pd.read_csv(results / "attention_gpu" / "attention_gpu.csv")
    k = d[(d.part == "kernel") & (d.phase == "prefill") & (d.status == "ok")]
    lens = sorted(k.seq_len.unique())
    head = " | ".join(f"{n // 1024}k ms" for n in lens)
    lines = [f"| mechanism | {head} | speedup vs flash SDPA at 32k |", "|" + "---|" * (len(lens) + 2)]
    for mech, g in k.groupby("mechanism"):
        g = g.set_index("seq_len")
        ms = " | ".join(f"{g.median_ms[n]:.2f}" if n in g.index else "" for n in lens)
        speed = f"{g.speedup_vs_sdpa[32768]:.2f}x" if 32768 in g.index else ""
        lines.append(f"| {mech} | {ms} | {speed} |")
    return "\n".join(lines)


def attn_table(results: Path) -> str:
    s = pd.read_csv(results / "attention" / "summary.csv")
    s = s[s.optim != "baseline"].sort_values(["optim", "content"])
    lines = ["| optim | content | Δppl [95% CI] | gate | KV / 16-bit |", "|---|---|---|---|---|"]
    lines += [f"| {_name(r)} | {r.content} | {_pct(r.ppl_delta, r.ppl_delta_low, r.ppl_delta_high)} | {r.gate} "
              f"| {r.kv_ratio:.3f} |" for r in s.itertuples()]
    return "\n".join(lines)


TABLES = {"kv-table": kv_table, "kv-gpu-table": kv_gpu_table, "attn-gpu-table": attn_gpu_table,
          "attn-table": attn_table}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results", type=Path)
    ap.add_argument("--readme", default="README.md", type=Path)
    args = ap.parse_args(argv)
    for name, build in TABLES.items():
        replace_readme_block(args.readme, name, build(args.results))
    print(f"[ollm_bench] README tables regenerated: {', '.join(TABLES)}")


if __name__ == "__main__":
    main()
