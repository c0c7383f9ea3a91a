"""C6, C8, C10, C14: KV-cache claims from suite `kv` quality cells (`report.quality.summarize`: one
cell per model x content x length with exact bytes and the 2 % gate on the paired t-interval over
documents), judged per model. Bytes are exact; the uncertainty is in the quality gate."""

from __future__ import annotations

import pandas as pd

from .evidence import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Evidence, devices, no_data, pct, rule
from .rows import cell

SUITE = "kv"
GATE = "gate: 95 % paired t-interval over documents vs the 2 % margin"
CELL_KEY = ["machine", "content", "seq_len", "seed", "batch_size"]


def by_model(rows, optim: str, suite: str = SUITE) -> list[tuple[str, pd.DataFrame]]:
    s = rows.quality(suite)
    return list(s[s.optim == optim].groupby("model")) if len(s) else []


def gate_of(r) -> str:
    """pass / fail / inconclusive, or why a cell has no verdict (documents differ, no paired baseline)."""
    g = r.get("gate")
    return g if isinstance(g, str) else "no gate: no paired baseline row"


def cell_text(r) -> str:
    if pd.isna(r.get("ppl_delta_high")):
        return f"{cell(r)} ({gate_of(r)})"
    return f"{cell(r)} Δppl {pct(r.ppl_delta)} [{pct(r.ppl_delta_low)}, {pct(r.ppl_delta_high)}]"


def gate_lists(cells: pd.DataFrame) -> dict[str, list]:
    out = {"pass": [], "fail": [], "undecided": []}  # undecided: inconclusive, or no gate at all
    for _, r in cells.iterrows():
        g = gate_of(r)
        out[g if g in ("pass", "fail") else "undecided"].append(r)
    return out


def gate_summary(gates: dict[str, list]) -> str:
    text = f"gate pass {len(gates['pass'])}/{sum(map(len, gates.values()))}"
    for name, shown in (("fail", "fail"), ("undecided", "inconclusive")):
        if gates[name]:
            text += f"; {shown}: " + ", ".join(cell_text(r) for r in gates[name])
    return text


def bytes_within_gate(values: pd.Series, gates: dict[str, list], threshold: float) -> str:
    """Bytes saved only count where quality holds: not reproduced if some cell misses the threshold
    or fails the gate, reproduced if every cell reaches it and passes, else inconclusive."""
    if (values < threshold).any() or gates["fail"]:
        return NOT_REPRODUCED
    return INCONCLUSIVE if gates["undecided"] or values.isna().any() else REPRODUCED


def _none(rows, optim: str) -> list[Evidence]:
    return [no_data(f"no {optim} quality cells in {rows.where(SUITE, 'quality')}")]


@rule
def kv_reduction_within_gate(rows, threshold: float, optim: str) -> list[Evidence]:
    """16-bit bytes / method bytes per cell: reproduced if every cell of the model passes the gate
    with ratio >= threshold; not reproduced if some cell fails the gate or has ratio < threshold;
    inconclusive otherwise. Value: smallest ratio among gate-passing cells."""
    out = []
    for model, c in by_model(rows, optim):
        ratio, gates = 1 / c.kv_ratio, gate_lists(c)
        passing = ratio[[gate_of(r) == "pass" for _, r in c.iterrows()]]
        small = ", ".join(f"{cell(r)} {x:.2f}x" for (_, r), x in zip(c.iterrows(), ratio) if x < threshold)
        out.append(Evidence(bytes_within_gate(ratio, gates, threshold), passing.min() if len(passing) else None,
                            interval=f"smallest over gate-passing cells; bytes exact; {GATE}", scope=model,
                            n=len(c), device=devices(c),
                            detail=f"16-bit / {optim} bytes {ratio.min():.2f}-{ratio.max():.2f}x over {len(c)} cells"
                            + (f" (below {threshold}x: {small})" if small else "") + f"; {gate_summary(gates)}"))
    return out or _none(rows, optim)


@rule
def gate_holds_everywhere(rows, threshold: float, optim: str) -> list[Evidence]:
    """Reproduced when every cell of the model passes the gate, not reproduced when some cell fails
    it (interval wholly above 2 %), inconclusive otherwise. Value: share of passing cells."""
    out = []
    for model, c in by_model(rows, optim):
        gates = gate_lists(c)
        verdict = NOT_REPRODUCED if gates["fail"] else INCONCLUSIVE if gates["undecided"] else REPRODUCED
        worst = c.loc[c.ppl_delta_high.astype(float).idxmax()] if c.ppl_delta_high.notna().any() else None
        out.append(Evidence(verdict, len(gates["pass"]) / len(c), interval=GATE, scope=model, n=len(c),
                            device=devices(c), detail=f"pass {len(gates['pass'])}, fail {len(gates['fail'])}, "
                            f"inconclusive {len(gates['undecided'])} of {len(c)} cells"
                            + (f"; worst upper bound {pct(worst.ppl_delta_high)} ({cell(worst)})" if worst is not None else "")
                            + (f"; {gate_summary(gates)}" if gates["fail"] or gates["undecided"] else "")))
    return out or _none(rows, optim)


@rule
def kv_bytes_saving(rows, threshold: float, optim: str, against: str) -> list[Evidence]:
    """1 - bytes(optim) / bytes(against) on the same cell; reproduced if every cell saves >=
    threshold and optim passes the gate there, not reproduced if some cell saves less or fails the
    gate, inconclusive otherwise."""
    theirs = {m: c for m, c in by_model(rows, against)}
    out = []
    for model, mine in by_model(rows, optim):
        both = mine.merge(theirs.get(model, mine.iloc[:0]), on=CELL_KEY, suffixes=("", "_against"))
        if both.empty:
            out.append(no_data(f"no cell holds both {optim} and {against}", model))
            continue
        saving, gates = 1 - both.kv_mib / both.kv_mib_against, gate_lists(both)
        out.append(Evidence(bytes_within_gate(saving, gates, threshold), saving.median(), saving.min(), saving.max(),
                            f"median [min, max] over cells; bytes exact; {GATE}", model, len(both), devices(both),
                            "per cell: " + ", ".join(f"{cell(r)} {x:+.1%}" for (_, r), x in zip(both.iterrows(), saving))
                            + f"; {optim} {gate_summary(gates)}"))
    return out or _none(rows, optim)


@rule
def repetitive_advantage(rows, threshold: float, optim: str, content: str = "repetitive") -> list[Evidence]:
    """Per length: median bytes of optim on the other contents / bytes on `content` - 1; reproduced
    if every length reaches the threshold and optim passes the gate on `content` there, not
    reproduced if some length misses it or fails the gate, inconclusive otherwise."""
    out = []
    for model, c in by_model(rows, optim):
        adv, rep_cells = {}, []
        for key, g in c.groupby(["machine", "seq_len", "seed", "batch_size"]):
            rep, other = g[g.content == content], g[g.content != content]
            if len(rep) and len(other):
                adv[int(key[1])] = other.kv_mib.median() / rep.kv_mib.iloc[0] - 1
                rep_cells.append(rep.iloc[0])
        if not adv:
            out.append(no_data(f"no length with {optim} on {content} and on another content", model))
            continue
        values, gates = pd.Series(adv), gate_lists(pd.DataFrame(rep_cells))
        out.append(Evidence(bytes_within_gate(values, gates, threshold), values.median(), values.min(), values.max(),
                            f"median [min, max] over lengths; bytes exact; {GATE}", model, len(c), devices(c),
                            f"bytes on other contents / on {content} - 1 per length: "
                            + ", ".join(f"{k}: {v:+.1%}" for k, v in adv.items()) + f"; {content} {gate_summary(gates)}"))
    return out or _none(rows, optim)
