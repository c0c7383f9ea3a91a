"""One benchmark run: load, build the optimized cache, score documents, time, count bytes.

Runs inside the spawned per-run process (runner.py), so peak RSS / CUDA peak belong to this run.
"""

from __future__ import annotations

import math
import platform
import resource
import statistics
import time

import numpy as np
import torch
from hydra.utils import instantiate

from optim import cache_nbytes, plain_kv_bytes

from .config import BenchConfig
from .data import load_documents
from .errors import ConfigError
from .models import load_model
from .quality import bootstrap_ppl_ci, perplexity, run_pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} asked for, but CUDA is not available here")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu: {cpu} x{torch.get_num_threads()} threads"


def _median_spread(values: list[float]) -> tuple[float, float]:
    """Median and full range (max - min) over repeats."""
    if not values:
        return math.nan, math.nan
    return statistics.median(values), max(values) - min(values)


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


STAT_HOOKS = ("stats", "dedup_stats", "bits_by_age", "choices")  # a method's self-report, by name


def _json_safe(value):
    return value if isinstance(value, (int, float, str, list, dict, bool, type(None))) else repr(value)


def _method_stats(method, cache) -> dict:
    """What a method reports about itself (dedup ratio, bits by age, per-layer choices, router pick)."""
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


def run_benchmark(bench: BenchConfig) -> dict:
    """Measure one config; returns the metric columns of its row (see store.COLUMNS)."""
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
    make_cache = (lambda: method.make_cache(config)) if hasattr(method, "make_cache") else None
    if make_cache is None:
        from optim import FullPrecisionKV

        make_cache = lambda: FullPrecisionKV().make_cache(config)  # noqa: E731

    quality = bench.quality.enabled and bench.model.weights
    n_docs = bench.quality.n_docs
    docs = load_documents(bench.content.name, lm.tokenizer, bench.seq_len, n_docs, bench.seed)
    ids_all = torch.tensor(docs, dtype=torch.long, device=device)
    if callable(getattr(method, "attach", None)):
        # Methods that hook the model (attention mechanisms, kvpress presses) see the request as a
        # server would: its text (content routing) and length.
        method.attach(model, context_text=lm.tokenizer.decode(docs[0][1:4096]), seq_len=bench.seq_len)
    score_tokens = bench.quality.score_tokens if quality else 0

    # Warm-up: first calls pay one-off costs (allocations, kernel selection) a server would not.
    warm = ids_all[:1, : min(bench.speed.warmup_tokens, bench.seq_len)]
    run_pass(model, make_cache, warm, 0, bench.quality.prefill_chunk, 0, decode_tokens=2)

    nll, prefill_rates, ttft, decode_steps, kv = [], [], [], [], {}

    def on_prefilled(cache) -> None:
        if not kv:  # first batch: the cache holds exactly seq_len tokens per row here
            kv["bytes"], kv["stats"] = cache_nbytes(cache), _method_stats(method, cache)

    for start in range(0, n_docs, bench.batch_size):
        ids = ids_all[start : start + bench.batch_size]
        res = run_pass(
            model, make_cache, ids, score_tokens, bench.quality.prefill_chunk, bench.quality.score_chunk,
            bench.speed.decode_tokens, on_prefilled=on_prefilled,
        )
        nll.extend(res.nll)
        prefill_rates.append(res.prefill_tokens / res.prefill_s)
        ttft.append(res.prefill_s + res.decode_step_s[0])
        # Steady-state decode: the first step is part of time to first token.
        decode_steps.append(ids.shape[0] / statistics.median(res.decode_step_s[1:]))

    row = {
        "device": device_name(device),
        "n_docs": n_docs,
        "kv_bytes": kv["bytes"],
        "kv_bytes_16bit": plain_kv_bytes(config, bench.seq_len, batch=min(bench.batch_size, n_docs)),
        "peak_mem_bytes": _peak_memory(device),
        "n_repeats": len(prefill_rates),
        "method_stats": kv["stats"],
    }
    row["prefill_tok_s"], row["prefill_tok_s_spread"] = _median_spread(prefill_rates)
    row["decode_tok_s"], row["decode_tok_s_spread"] = _median_spread(decode_steps)
    row["ttft_s"], row["ttft_s_spread"] = _median_spread(ttft)
    if quality:
        nll_arr, n_arr = np.array(nll), np.full(len(nll), score_tokens, dtype=float)
        ppl = perplexity(nll_arr, n_arr)
        if not math.isfinite(ppl):
            raise FloatingPointError(f"perplexity is {ppl} (non-finite NLL from the optimized cache)")
        row["ppl"] = ppl
        row["ppl_ci_low"], row["ppl_ci_high"] = bootstrap_ppl_ci(nll_arr, n_arr, bench.quality.bootstrap, bench.seed)
        row["doc_nll"] = [round(x, 6) for x in nll]
        row["scored_tokens"] = score_tokens
    return row


def timed_run(bench: BenchConfig) -> dict:
    t0 = time.perf_counter()
    row = run_benchmark(bench)
    row["wall_s"] = round(time.perf_counter() - t0, 3)
    return row
