"""Quality per byte against the peers: in each cell, does some method of ours hold no more KV bytes
than a peer and score at least as well?

Per (model, machine, content, length) and per peer row, the candidate is the configuration of ours
with the lowest perplexity change among those at or below the peer's bytes. Every configuration
measured in the cell is a candidate, under its label (`kv_k4v2(residual=64)`: the YAML with one
override), since each is a point on our side of the Pareto picture that anyone can run; picking the
best of several on the same documents favours ours a little, so the paired interval is shown.
Bytes are compared as a 16-bit deployment would hold them: a peer that keeps the model's fp32
(kvpress' caches, quanto's scales and zero-points, unquantized sliding layers) has those tensors
counted at 16 bits, so running our CPU rows in fp32 does not make a peer look bigger than it is. Ours and the peer scored the same
documents, so their perplexity ratio is paired per document (t-interval, `evaluate/stats.py`):
- `better`: the interval lies below 0 (ours lower perplexity beyond noise);
- `as good`: the interval spans 0;
- `worse`: the interval lies above 0;
- `no method at these bytes`: nothing of ours is that small in this cell.
Pairs are matched by document hash over the documents both scored; where they share none the
pairing is refused (`documents differ`), never guessed.
"""

from __future__ import annotations

import pandas as pd

from ..evaluate.stats import CI_METHOD, paired_rows
from .quality import BASELINE, KEY, _is_peer, latest_ok, pct, ratio_16bit, variant_labels

COLUMNS = ["model", "content", "seq_len", "peer", "peer_kv_ratio", "peer_delta", "ours", "ours_kv_ratio",
           "ours_delta", "ours_vs_peer", "ours_vs_peer_low", "ours_vs_peer_high", "n_docs", "verdict"]


def _verdict(low: float, high: float) -> str:
    if high < 0:
        return "better"
    if low > 0:
        return "worse"
    return "as good"


def peer_comparison(df: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell, peer); `summary` from `quality.summarize` (the same rows), for Δppl vs baseline."""
    ok = latest_ok(df)
    labels = variant_labels(ok)
    ok = ok.assign(kv_ratio=[ratio_16bit(r) for _, r in ok.iterrows()],
                   label=[labels[(r.optim, r.variant)] for _, r in ok.iterrows()])
    rows = {tuple(r[k] for k in KEY) + (r.label,): r for _, r in ok.iterrows()}
    deltas = {tuple(r[k] for k in KEY) + (r.label,): r.ppl_delta for _, r in summary.iterrows()
              if "ppl_delta" in summary}
    out = []
    for cell, part in ok.groupby(KEY):
        peers = part[part.peer.map(_is_peer) & (part.optim != BASELINE)]
        ours = part[~part.peer.map(_is_peer) & (part.optim != BASELINE)]
        for _, p in peers.iterrows():
            base = dict(zip(KEY, cell)) | {"peer": p.label, "peer_kv_ratio": p.kv_ratio,
                                           "peer_delta": deltas.get(cell + (p.label,))}
            small = ours[ours.kv_ratio <= p.kv_ratio + 1e-9]
            small = small.assign(delta=[deltas.get(cell + (o,)) for o in small.label]).dropna(subset=["delta"])
            if small.empty:
                out.append(base | {"verdict": "no method at these bytes"})
                continue
            best = small.sort_values(["delta", "kv_ratio"]).iloc[0]
            entry = base | {"ours": best.label, "ours_kv_ratio": best.kv_ratio, "ours_delta": best.delta}
            mine, theirs = rows[cell + (best.label,)], rows[cell + (p.label,)]
            ch = paired_rows(mine, theirs)
            if ch is None:
                out.append(entry | {"verdict": "documents differ"})
                continue
            out.append(entry | {"ours_vs_peer": ch.point, "ours_vs_peer_low": ch.low, "ours_vs_peer_high": ch.high,
                                "n_docs": ch.n, "verdict": _verdict(ch.low, ch.high)})
    return pd.DataFrame(out, columns=[*KEY, *COLUMNS[3:]]).sort_values(["model", "content", "seq_len", "peer"]) \
        .reset_index(drop=True) if out else pd.DataFrame(columns=[*KEY, *COLUMNS[3:]])


def table_lines(table: pd.DataFrame) -> list[str]:
    """The comparison as markdown table lines (header first)."""
    lines = ["| model | content | len | peer (KV / 16-bit, Δppl) | ours (KV / 16-bit, Δppl) | ours vs peer [95 % CI] | n | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        peer = f"{r.peer} ({r.peer_kv_ratio:.3f}, {pct(r.peer_delta)})"
        ours = f"{r.ours} ({r.ours_kv_ratio:.3f}, {pct(r.ours_delta)})" if isinstance(r.ours, str) else "—"
        vs = (f"{pct(r.ours_vs_peer)} [{pct(r.ours_vs_peer_low)}, {pct(r.ours_vs_peer_high)}]"
              if pd.notna(r.ours_vs_peer) else "—")
        n = int(r.n_docs) if pd.notna(r.n_docs) else "—"
        lines.append(f"| {r.model} | {r.content} | {int(r.seq_len)} | {peer} | {ours} | {vs} | {n} | {r.verdict} |")
    return lines


def markdown(table: pd.DataFrame) -> list[str]:
    """The report section: heading, what the columns mean, the table."""
    if table.empty:
        return []
    return ["## Against the peers: quality per byte", "",
            "Per cell and peer: the configuration of ours (any measured in the cell, by its label) with the "
            "lowest Δppl among those holding no more KV bytes "
            "(KV / 16-bit with fp32 tensors counted at 16 bits, as a 16-bit deployment holds them), "
            f"and its perplexity vs the peer's paired on the same documents ({CI_METHOD}). `better` / `worse`: "
            "the interval lies wholly below / above 0; `as good`: it spans 0.", "", *table_lines(table), ""]
