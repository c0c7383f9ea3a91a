"""C9, C15: GPU decode rows (suite `kv_gpu`, scenario `decode`; `report.speed.decode_summary`), each
compared with the baseline of the same model, device, decode mode, context and batch. C15 reads
the bytes at a context where the method's quality (suite `kv`) holds for the model it is about."""

from __future__ import annotations

import pandas as pd

from ..speed import DECODE_KEY, FUSED_GRAPH, decode_summary
from .evidence import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Evidence, interval_verdict, no_data, rule
from .kv import by_model, gate_lists

SUITE, SCENARIO = "kv_gpu", "decode"
RANGE = "worst (context, batch) cell; p10-p90 of step times on both sides (worst pairing)"


def _decode(rows) -> pd.DataFrame:
    df = rows.rows(SUITE, SCENARIO)
    s = decode_summary(df) if len(df) else df.copy()
    if len(s):  # a row run with an override (e.g. no sinks on the fused store) is not the configured method
        s = s[s.label == s.optim]
    for q in ("step_ms_p10", "step_ms_p90"):  # no spread stored: the range is the point
        s[q] = s[q].fillna(s.step_ms)
    return s


@rule
def decode_speedup(rows, threshold: float, optim: str, mode: str | None = None, prefer_kernel: str = "triton") -> list[Evidence]:
    """Baseline step time / method step time - 1 per (context, batch) in `mode` (default: the
    graph step with fused pointwise kernels where the method has such rows, else the plain graph
    step), preferring the `prefer_kernel` row of the method; the claim is general, so the worst
    cell's p10-p90 range decides (reproduced if it clears the threshold, not reproduced if some
    cell stays below)."""
    s = _decode(rows)
    if mode is None:
        fused = len(s) and ((s.decode_mode == FUSED_GRAPH) & (s.optim == optim)).any()
        mode = FUSED_GRAPH if fused else "graph"
    s = s[s.decode_mode == mode] if len(s) else s
    if s.empty or not (s.optim == optim).any():
        return [no_data(f"no {mode}-mode {optim} decode rows in {rows.where(SUITE, SCENARIO)}")]
    base = s[s.optim == "baseline"].drop_duplicates(DECODE_KEY, keep="last").set_index(DECODE_KEY)
    out = []
    for model, mine in s[s.optim == optim].groupby("model"):
        cells, unpaired = [], []
        for key, g in mine.groupby(DECODE_KEY):
            r = (g[g.kernel == prefer_kernel] if (g.kernel == prefer_kernel).any() else g).iloc[-1]
            if key not in base.index:
                unpaired.append(f"{int(key[3])}/b{int(key[4])}")
                continue
            b = base.loc[key]
            cells.append((r, b.step_ms / r.step_ms - 1, b.step_ms_p10 / r.step_ms_p90 - 1, b.step_ms_p90 / r.step_ms_p10 - 1))
        if not cells:
            out.append(no_data(f"no baseline row at the contexts/batches of {optim} ({', '.join(unpaired)})", model))
            continue
        low, high = min(c[2] for c in cells), min(c[3] for c in cells)
        out.append(Evidence(interval_verdict(low, high, threshold), min(c[1] for c in cells), low, high, RANGE, model,
                            len(cells), ", ".join(sorted(set(mine.device))),
                            f"{mode} mode, step-time speedup - 1 per context/batch: " + ", ".join(
                                f"{int(r.seq_len)}/b{int(r.batch_size)} ({r.kernel}) {v:+.0%} [{lo:+.0%}, {hi:+.0%}]"
                                for r, v, lo, hi in cells) + (f"; no baseline at {', '.join(unpaired)}" if unpaired else "")))
    return out


def _saved_bytes(dec: pd.DataFrame, length: int) -> tuple[float, str]:
    """Bytes saved vs the 16-bit cache at `length`: measured there, else scaled linearly (KV bytes
    grow with tokens) from the nearest measured context."""
    at = dec[dec.seq_len == length]
    if len(at):
        return float(at.saved.median()), f"measured at {length}"
    nearest = int(dec.seq_len.iloc[(dec.seq_len - length).abs().argmin()])
    return float(dec[dec.seq_len == nearest].saved.median()) * length / nearest, f"scaled linearly from {nearest}"


def _length_status(cells: pd.DataFrame) -> dict[int, str]:
    """pass: every content of the model measured and passing at that length; fail: some content
    fails; undecided otherwise (an inconclusive gate, or a content not measured there)."""
    contents, status = set(cells.content), {}
    for length, g in cells.groupby("seq_len"):
        gates = gate_lists(g)
        status[int(length)] = ("fail" if gates["fail"] else
                               "pass" if set(g.content) == contents and not gates["undecided"] else "undecided")
    return status


@rule
def kv_gb_saved(rows, threshold: float, optim: str, decode_model: str | None = None, batch: int = 1) -> list[Evidence]:
    """GB saved vs the 16-bit cache (whole model of the decode rows, batch 1) at the longest context
    where the method passes the gate on every content of the model: reproduced if >= threshold;
    inconclusive if not, but a longer length with undecided quality would reach it; else not
    reproduced (also when no length keeps quality on every content)."""
    dec = rows.rows(SUITE, SCENARIO)
    dec = dec[(dec.optim == optim) & (dec.batch_size == batch) & dec.kv_bytes.notna() & dec.kv_bytes_16bit.notna()]
    if decode_model is not None:
        dec = dec[dec.model == decode_model]
    dec = dec.assign(saved=dec.kv_bytes_16bit - dec.kv_bytes)
    models = by_model(rows, optim)
    if dec.empty or not models:
        return [no_data(f"needs {optim} quality cells (results/kv) and its batch-{batch} decode rows with KV bytes"
                        f" in {rows.where(SUITE, SCENARIO)}")]
    shapes = f"{', '.join(sorted(set(dec.model)))} shapes, batch {batch}, 1 GB = 1e9 bytes"
    out = []
    for model, cells in models:
        status = _length_status(cells)
        passing = [n for n, s in status.items() if s == "pass"]
        longer = [n for n, s in status.items() if s == "undecided" and n > max(passing, default=0)]
        reach = [n for n in longer if _saved_bytes(dec, n)[0] / 1e9 >= threshold]
        if passing:
            saved, how = _saved_bytes(dec, max(passing))
            gb = saved / 1e9
            verdict = REPRODUCED if gb >= threshold else INCONCLUSIVE if reach else NOT_REPRODUCED
            detail = f"{gb:.2f} GB at {max(passing)} tokens ({how}), the longest length where {optim} passes on every content"
        else:
            gb, verdict = None, INCONCLUSIVE if reach else NOT_REPRODUCED
            detail = f"no length where {optim} passes the gate on every content of {model}"
        if reach:
            detail += f"; quality undecided at {', '.join(map(str, reach))}, where it would reach {threshold} GB"
        detail += "; gate per length: " + ", ".join(f"{n}: {s}" for n, s in sorted(status.items()))
        out.append(Evidence(verdict, gb, interval="bytes exact", scope=model, n=len(cells),
                            device=", ".join(sorted(set(dec.device))), detail=f"{detail} ({shapes})"))
    return out
