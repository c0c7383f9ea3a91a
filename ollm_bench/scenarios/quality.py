"""Scenario `quality`: perplexity with the method's cache in the loop, exact KV bytes and what they
hold, and (as context, not evidence) CPU prefill/decode speed from the same passes.

Runs inside the spawned per-run process (run/runner.py), so peak RSS / CUDA peak belong to this run.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np
import torch

from optim import cache_nbytes, plain_kv_bytes, storage_report

from ..config import BenchConfig
from ..data import load_documents
from ..errors import ConfigError
from ..evaluate.scoring import run_pass
from ..evaluate.stats import perplexity, ppl_interval
from ..methods import make_cache_fn
from ..models import load_model
from ..run.environment import device_name, resolve_device
from .base import Scenario, median_spread, positive

STAT_HOOKS = ("stats", "dedup_stats", "choices")  # a method's self-report, by name


def default_score_tokens(seq_len: int) -> int:
    """Tokens scored per document when not set: 512 at 2048, 1024 at 8192 (a quarter, at least 512
    where the document allows it, never more than half of it)."""
    return min(max(512, seq_len // 8), seq_len // 2) if seq_len >= 1024 else seq_len // 4


@dataclass
class QualityScenario(Scenario):
    name: ClassVar[str] = "quality"
    n_docs: int = 24
    score_tokens: Optional[int] = None  # last tokens of each document scored from the cache; None: auto
    prefill_chunk: int = 512
    score_chunk: int = 128
    decode_tokens: int = 4
    warmup_tokens: int = 64

    def __post_init__(self):
        positive(self, "n_docs", "prefill_chunk", "score_chunk", "warmup_tokens")
        if self.score_tokens is not None and self.score_tokens <= 0:
            raise ConfigError(f"scenario.score_tokens must be positive, got {self.score_tokens}")
        if self.decode_tokens < 2:
            raise ConfigError("scenario.decode_tokens must be >= 2 (the first token is time to first token)")

    def scored(self, seq_len: int) -> int:
        return self.score_tokens if self.score_tokens is not None else default_score_tokens(seq_len)

    def check(self, bench: BenchConfig) -> None:
        super().check(bench)
        if bench.content.name == "random" and bench.model.weights:
            raise ConfigError("content=random has no text to score; the quality scenario needs a real content type")
        if bench.model.weights and self.scored(bench.seq_len) >= bench.seq_len:
            raise ConfigError(f"scenario.score_tokens={self.scored(bench.seq_len)} must be smaller than "
                              f"seq_len={bench.seq_len}")

    def run(self, bench: BenchConfig) -> dict:
        return measure_quality(self, bench)


def _json_safe(value):
    return value if isinstance(value, (int, float, str, list, dict, bool, type(None))) else repr(value)


def _method_stats(method, cache) -> dict:
    """What a method reports about itself (dedup ratio, per-layer choices, router pick)."""
    out = {}
    for hook in STAT_HOOKS:
        fn = getattr(method, hook, None)
        if callable(fn):
            try:
                out[hook] = _json_safe(fn(cache))
            except Exception as exc:  # a method's self-report must not sink the measurement
                out[f"{hook}_error"] = repr(exc)
    last = getattr(method, "last", None)
    if isinstance(last, dict) and "choice" in last:
        out["router_choice"] = str(last["choice"])
    return out


def _peak_memory(device: torch.device) -> int:
    import resource

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def measure_quality(sc: QualityScenario, bench: BenchConfig) -> dict:
    """Measure one config; returns the metric columns of its row (see run/store.COLUMNS)."""
    from hydra.utils import instantiate

    torch.manual_seed(bench.seed)
    # Denormal floats take a slow microcode path on some x86 CPUs (up to 100x on elementwise ops);
    # flushing them is standard for inference and applies to baseline and methods alike.
    torch.set_flush_denormal(True)
    device = resolve_device(bench.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    lm = load_model(bench.model, device=str(device))
    model, config = lm.model, lm.model.config
    max_pos = getattr(config.get_text_config(decoder=True), "max_position_embeddings", None)
    if max_pos is not None and bench.seq_len > max_pos:
        raise ConfigError(f"seq_len={bench.seq_len} exceeds model {bench.model.name!r} max_position_embeddings={max_pos}")
    method = instantiate(bench.optim.method)
    make_cache = make_cache_fn(method, config)

    quality = bench.model.weights
    docs = load_documents(bench.content.name, lm.tokenizer, bench.seq_len, sc.n_docs, bench.seed,
                          path=bench.content.path, split=bench.content.split, vocab_size=getattr(config.get_text_config(decoder=True), "vocab_size", None))
    ids_all = torch.tensor([d.ids for d in docs], dtype=torch.long, device=device)
    if callable(getattr(method, "attach", None)):
        # Methods that hook the model (attention mechanisms, kvpress presses) see the request as a
        # server would: its text (content routing) and length.
        method.attach(model, context_text=lm.tokenizer.decode(list(docs[0].ids[1:4096])), seq_len=bench.seq_len)
    score_tokens = sc.scored(bench.seq_len) if quality else 0

    # Warm-up: first calls pay one-off costs (allocations, kernel selection) a server would not.
    warm = ids_all[:1, : min(sc.warmup_tokens, bench.seq_len)]
    run_pass(model, make_cache, warm, 0, sc.prefill_chunk, 0, decode_tokens=2)

    nll, prefill_rates, ttft, decode_rates, kv = [], [], [], [], {}

    def on_prefilled(cache) -> None:
        if not kv:  # first batch: the cache holds exactly seq_len tokens per row here
            kv["bytes"], kv["stats"], kv["storage"] = cache_nbytes(cache), _method_stats(method, cache), storage_report(cache)

    for start in range(0, sc.n_docs, bench.batch_size):
        ids = ids_all[start : start + bench.batch_size]
        res = run_pass(model, make_cache, ids, score_tokens, sc.prefill_chunk, sc.score_chunk, sc.decode_tokens,
                       on_prefilled=on_prefilled)
        nll.extend(res.nll)
        prefill_rates.append(res.prefill_tokens / res.prefill_s)
        ttft.append(res.prefill_s + res.decode_step_s[0])
        # Steady-state decode: the first step is part of time to first token.
        decode_rates.append(ids.shape[0] / statistics.median(res.decode_step_s[1:]))

    row = {
        "device": device_name(device),
        "n_docs": sc.n_docs,
        "doc_hashes": [d.hash for d in docs],
        "kv_bytes": kv["bytes"],
        "kv_bytes_16bit": plain_kv_bytes(config, bench.seq_len, batch=min(bench.batch_size, sc.n_docs)),
        "kv_storage": kv["storage"],
        "peak_mem_bytes": _peak_memory(device),
        "n_repeats": len(prefill_rates),  # timed passes (one per batch of documents)
        "decode_mode": "eager",
        "kernel": getattr(method, "kernel", "torch"),
        "method_stats": kv["stats"],
        "calibration": bench.optim.calibration,
    }
    row["prefill_tok_s"], row["prefill_tok_s_spread"] = median_spread(prefill_rates)
    row["decode_tok_s"], row["decode_tok_s_spread"] = median_spread(decode_rates)
    row["ttft_s"], row["ttft_s_spread"] = median_spread(ttft)
    if quality:
        nll_arr, n_arr = np.array(nll), np.full(len(nll), score_tokens, dtype=float)
        ppl = perplexity(nll_arr, n_arr)
        if not math.isfinite(ppl):
            raise FloatingPointError(f"perplexity is {ppl} (non-finite NLL from the optimized cache)")
        row["ppl"] = ppl
        low, high = ppl_interval(nll_arr, n_arr)
        row["ppl_ci_low"], row["ppl_ci_high"] = (None if math.isnan(low) else low), (None if math.isnan(high) else high)
        row["doc_nll"] = [round(x, 6) for x in nll]
        row["scored_tokens"] = score_tokens
    return row
