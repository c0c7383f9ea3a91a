"""C7, C11: what the stored caches hold, read from the `kv_storage` report of suite `kv` quality rows
(`optim.base.storage_report`: tensors with dtype and bytes, payload bits per key/value element,
bits per element by token age), judged per model. Nothing here builds or runs a model."""

from __future__ import annotations

import pandas as pd

from .evidence import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Evidence, devices, no_data, rule
from .rows import cell, latest

SUITE = "kv"
EXACT = "exact: read off the stored tensors"


def _rows_by_model(rows, optim: str) -> list[tuple[str, pd.DataFrame]]:
    df = latest(rows.rows(SUITE, "quality"), ["model", "device", "content", "seq_len", "seed", "batch_size", "optim"])
    return list(df[df.optim == optim].groupby("model"))


def _payload_state(storage, key_bits: int, value_bits: int, value_codes: str, value_dtype: str) -> tuple[str, str]:
    """(conforms | contradicts | unreported, what the row holds)."""
    payload = (storage or {}).get("payload_bits") or {}
    if not payload.get("key") and not payload.get("value"):
        return "unreported", "no storage report"
    codes = (storage.get("tensors") or {}).get(value_codes, {}).get("dtype")
    held = f"key {payload.get('key')} bits, value {payload.get('value')} bits, {value_codes} {codes}"
    ok = payload.get("key") == [key_bits] and payload.get("value") == [value_bits] and codes == value_dtype
    return ("conforms" if ok else "contradicts"), held


@rule
def kv_storage_bits(rows, threshold: float, optim: str, key_bits: int, value_bits: int, value_codes: str,
                    value_dtype: str) -> list[Evidence]:
    """Every stored row's payload is exactly `key_bits` per key element and `value_bits` per value
    element, with the value codes in `value_dtype`: reproduced if all rows conform, not reproduced
    if one contradicts, inconclusive if some rows hold no storage report. Value: conforming share."""
    out = []
    for model, df in _rows_by_model(rows, optim):
        states = [(_payload_state(r.kv_storage, key_bits, value_bits, value_codes, value_dtype), r)
                  for r in df.itertuples()]
        kinds = [s for (s, _), _ in states]
        verdict = (NOT_REPRODUCED if "contradicts" in kinds else INCONCLUSIVE if "unreported" in kinds else REPRODUCED)
        shown = {}
        for (kind, held), r in states:
            shown.setdefault(f"{kind}: {held}", []).append(cell(r))
        out.append(Evidence(verdict, kinds.count("conforms") / len(kinds), interval=EXACT, scope=model, n=len(kinds),
                            device=devices(df), detail="; ".join(f"{k} ({len(v)} rows, e.g. {v[0]})" for k, v in shown.items())))
    return out or [no_data(f"no {optim} quality rows in {rows.where(SUITE, 'quality')}")]


def _layer_trends(tiers: list[dict]) -> dict[int, list[float]]:
    """Bits per element of each layer, newest tier first."""
    layers: dict[int, list[dict]] = {}
    for t in tiers:
        layers.setdefault(t["layer"], []).append(t)
    return {k: [t["bits_per_element"] for t in sorted(v, key=lambda t: t["age_from"])] for k, v in layers.items()}


def _falls(bits: list[float]) -> bool:
    return all(a >= b for a, b in zip(bits, bits[1:])) and bits[-1] < bits[0]


@rule
def bits_fall_with_age(rows, threshold: float, optim: str) -> list[Evidence]:
    """At the longest stored length: reproduced if in every layer of every row bits per stored
    element never rise with age and the oldest tier holds fewer than the newest; not reproduced if a
    layer holding two or more tiers breaks that; inconclusive if a layer holds a single tier (the
    context is too short to reach an older tier) or the rows hold no `bits_by_age` report."""
    out = []
    for model, df in _rows_by_model(rows, optim):
        longest = df[df.seq_len == df.seq_len.max()]
        trends = {cell(r): _layer_trends((r.kv_storage or {}).get("bits_by_age") or []) for r in longest.itertuples()}
        all_layers = [(c, layer, bits) for c, t in trends.items() for layer, bits in t.items()]
        rising = [(c, layer, bits) for c, layer, bits in all_layers if len(bits) > 1 and not _falls(bits)]
        single = [(c, layer) for c, layer, bits in all_layers if len(bits) == 1]
        unreported = [c for c, t in trends.items() if not t]
        verdict = NOT_REPRODUCED if rising else INCONCLUSIVE if single or unreported else REPRODUCED
        falling = sum(len(bits) > 1 and _falls(bits) for _, _, bits in all_layers)
        deepest = max(all_layers, key=lambda x: len(x[2]), default=None)
        detail = f"{falling}/{len(all_layers)} layers fall with age at {int(longest.seq_len.iloc[0])} tokens"
        if deepest:
            detail += f"; newest->oldest bits/element, layer {deepest[1]} ({deepest[0]}): " + " -> ".join(
                f"{b:.2f}" for b in deepest[2])
        if rising:
            detail += "; rises in " + ", ".join(f"layer {l} ({c}): {' -> '.join(f'{b:.2f}' for b in bits)}"
                                                for c, l, bits in rising[:4])
        if single:
            detail += f"; {len(single)} layers hold one age tier only (too short a context to show a trend)"
        if unreported:
            detail += f"; no bits_by_age report in {', '.join(unreported)}"
        out.append(Evidence(verdict, falling / len(all_layers) if all_layers else None, interval=EXACT, scope=model,
                            n=len(all_layers), device=devices(longest), detail=detail))
    return out or [no_data(f"no {optim} quality rows in {rows.where(SUITE, 'quality')}")]
