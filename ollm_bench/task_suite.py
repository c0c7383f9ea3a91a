"""`suite=quality`: our offline lm-eval tasks for the baseline and each optimization, scored
through the optimized cache (`CacheInLoopLM`), with a paired gate against the baseline.

    python -m ollm_bench tasks [optims=baseline,kv_int8,...] [tasks=...] [limit=20] [results_dir=results]

Rows go to `results/quality/tasks.csv` (one per optim x task x metric) and per-document scores to
`results/quality/samples.jsonl`, so deltas are paired over the same documents:
- accuracy metrics (acc, exact_match): drop in points, gate passes if the CI's upper end <= 2 points;
- perplexity metrics: ppl_opt / ppl_base - 1, gate passes if the CI's upper end <= 2 %.
Both with a 95 % bootstrap CI over documents (DESIGN.md's gate).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ConfigError
from .quality import gate_verdict

DEFAULT_TASKS = ("ollm_cloze_prose", "ollm_niah_1k", "ollm_rolling_prose", "ollm_rolling_code")
ACCURACY = ("acc", "exact_match")
ITERS = 2000


def _per_doc(samples: list[dict]) -> dict[str, dict[int, object]]:
    """metric -> doc_id -> value (scalar, or (loglikelihood, units) for perplexities)."""
    out: dict[str, dict[int, object]] = {}
    for s in samples:
        for metric in s["metrics"]:
            value = s[metric]
            out.setdefault(metric, {})[int(s["doc_id"])] = list(value) if isinstance(value, tuple) else float(value)
    return out


def _aggregate(metric: str, values: list) -> float:
    if metric in ACCURACY:
        return float(np.mean(values))
    if values and isinstance(values[0], list):  # (loglikelihood, units): corpus-level as lm-eval does
        ll, units = map(np.sum, zip(*values))
        return float(-ll / units / math.log(2)) if metric == "bits_per_byte" else float(math.exp(-ll / units))
    return float(math.exp(-np.mean(values)))  # per-document loglikelihoods (cloze perplexity)


def paired_delta(metric: str, opt: dict[int, object], base: dict[int, object], seed: int = 0):
    """(point, ci_low, ci_high) of the quality loss: points for accuracy, relative for perplexity."""
    docs = sorted(set(opt) & set(base))
    if not docs:
        raise ConfigError(f"no common documents to compare for metric {metric}")
    idx = np.random.default_rng(seed).integers(0, len(docs), size=(ITERS, len(docs)))

    def loss(sel):
        o = _aggregate(metric, [opt[docs[i]] for i in sel])
        b = _aggregate(metric, [base[docs[i]] for i in sel])
        if metric in ACCURACY:
            return 100 * (b - o)
        return (o / b - 1) if metric != "bits_per_byte" else (2 ** (o - b) - 1)

    point = loss(range(len(docs)))
    boots = np.array([loss(row) for row in idx])
    return point, float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))


def run_tasks(optims: list[str], tasks: list[str], limit: int, results_dir: Path) -> pd.DataFrame:
    import os

    import torch

    # Everything is local; never let `datasets`/`huggingface_hub` reach for a hub.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from optim import ATTENTION, REGISTRY

    from .lm_eval_model import CacheInLoopLM
    from .measure import device_name
    from .models import load_pretrained
    from .tasks import evaluate

    unknown = [o for o in optims if o not in REGISTRY and o not in ATTENTION]
    if unknown:
        raise ConfigError(f"unknown optim(s) {unknown}; known: {sorted(REGISTRY) + sorted(ATTENTION)}")
    if "baseline" not in optims:
        optims = ["baseline", *optims]
    out_dir = Path(results_dir) / "quality"
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_flush_denormal(True)
    lm = load_pretrained("gemma3_270m")
    per_doc: dict[str, dict] = {}
    for optim in optims:
        method = REGISTRY.get(optim) or REGISTRY["baseline"]
        attention = ATTENTION.get(optim)
        if attention is not None:
            attention.attach(lm.model)
        try:
            model = CacheInLoopLM(lm.model, lm.tokenizer, method.make_cache, max_length=2048)
            result = evaluate(model, tasks, limit=limit, log_samples=True)
        finally:
            if attention is not None:
                attention.detach(lm.model)
        per_doc[optim] = {task: _per_doc(samples) for task, samples in result["samples"].items()}
        print(f"[ollm_bench] tasks done for {optim}", flush=True)
    rows, started = [], dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    with open(out_dir / "samples.jsonl", "w") as fh:
        for optim, by_task in per_doc.items():
            for task, metrics in by_task.items():
                fh.write(json.dumps({"optim": optim, "task": task, "limit": limit, "per_doc": metrics}) + "\n")
                for metric, docs in metrics.items():
                    row = {"optim": optim, "task": task, "metric": metric, "n_docs": len(docs),
                           "value": _aggregate(metric, list(docs.values())), "limit": limit,
                           "device": device_name(torch.device("cpu")), "started_at": started}
                    if optim != "baseline":
                        point, lo, hi = paired_delta(metric, docs, per_doc["baseline"][task][metric])
                        unit = 100.0 if metric in ACCURACY else 1.0  # gate budget: 2 points or 2 %
                        row.update(loss=point, loss_ci_low=lo, loss_ci_high=hi,
                                   loss_unit="points" if metric in ACCURACY else "relative",
                                   gate=gate_verdict(lo / unit, hi / unit))
                    rows.append(row)
    table = pd.DataFrame(rows)
    table.to_csv(out_dir / "tasks.csv", index=False)
    return table
