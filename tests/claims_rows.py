"""Hand-built result rows in the real schema (`run/store.COLUMNS`, written with `ResultStore.append`)
for the claim tests: each builder sets only what its scenario stores."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

from ollm_bench.report.claims import evaluate
from ollm_bench.run.store import ResultStore

_ids = itertools.count()
TOKENS, DOCS = 100, 6
# Per-document log-ratio noise around the target change: a tight spread decides the gate, a wide one
# straddles the 2 % margin.
SPREAD = {"pass": (0.0, 0.002), "fail": (0.06, 0.002), "inconclusive": (0.02, 0.03)}
NOISE = (-1.0, 1.0, -0.5, 0.5, -0.25, 0.25)


def base_row(suite: str, scenario: str, optim: str, **fields) -> dict:
    i = next(_ids)
    return {"run_id": f"r{i}", "config_hash": f"h{i}", "suite": suite, "scenario": scenario, "optim": optim,
            "status": "ok", "device": "cpu", "started_at": f"2025-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}.{i:06d}",
            "seed": 0, "batch_size": 1, **fields}


def quality_pair(model: str, optim: str, content: str, seq_len: int, gate: str, ratio: float = 0.4,
                 suite: str = "kv", **fields) -> list[dict]:
    """A baseline row and a method row on the same documents whose paired interval gives `gate`
    (pass / fail / inconclusive); the method holds `ratio` of the 16-bit bytes."""
    target, spread = SPREAD[gate]
    base_nll = [TOKENS * (2.0 + 0.1 * k) for k in range(DOCS)]
    nll = [b + TOKENS * (math.log1p(target) + spread * e) for b, e in zip(base_nll, NOISE)]
    common = dict(model=model, content=content, seq_len=seq_len, n_docs=DOCS, scored_tokens=TOKENS,
                  doc_hashes=[f"{content}{seq_len}-{k}" for k in range(DOCS)], kv_bytes_16bit=1_000_000,
                  prefill_tok_s=100.0, decode_tok_s=10.0, decode_tok_s_spread=1.0, n_repeats=3)
    base = base_row(suite, "quality", "baseline", **common, doc_nll=base_nll, ppl=7.0, kv_bytes=2_000_000,
                    kv_ratio=2.0)
    mine = base_row(suite, "quality", optim, **common | {"doc_nll": nll, "ppl": 7.1, "kv_bytes": int(ratio * 1e6),
                                                          "kv_ratio": ratio} | fields)
    return [base, mine]


def metric_row(suite: str, scenario: str, optim: str, metric: str, median: float, p10: float | None = None,
               p90: float | None = None, n: int = 30, **fields) -> dict:
    return base_row(suite, scenario, optim, metric=metric, metric_value=median, metric_p10=p10 if p10 is not None else median,
                    metric_p90=p90 if p90 is not None else median, metric_n=n, metric_unit="", **fields)


def decode_row(optim: str, context: int, batch: int, step_ms: float, spread: float = 0.0, kernel: str = "torch",
               mode: str = "graph", model: str = "llama31_8b_noweights", **fields) -> dict:
    return base_row("kv_gpu", "decode", optim, model=model, seq_len=context, batch_size=batch, decode_mode=mode,
                    kernel=kernel, step_ms=step_ms, step_ms_p10=step_ms - spread, step_ms_p90=step_ms + spread,
                    device="NVIDIA H100", **fields)


def write(root: Path, rows: list[dict]) -> Path:
    for r in rows:
        ResultStore(root / r["suite"] / "runs.csv").append(r)
    return root


def verdicts(root: Path, claim: dict) -> dict[str, str]:
    """scope -> verdict of one claim over the rows under `root`."""
    table = evaluate([claim], root)
    return dict(zip(table.scope, table.verdict))


def claim(id_: str) -> dict:
    from ollm_bench.report.claims import load_claims

    return next(c for c in load_claims(Path(__file__).resolve().parent.parent / "conf/claims/ollm_enhanced.yaml")
                if c["id"] == id_)
