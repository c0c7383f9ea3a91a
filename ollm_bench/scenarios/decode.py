"""Scenario `decode`: the time of one decode step (one token per sequence) at a given context and
batch, the bytes it must move, and how close it comes to the memory bandwidth.

Decode is bandwidth-bound: a step reads the weights and the KV cache once. Every method, the
baseline included, is timed in the same decode mode, and rows are compared only within a mode:

- `graph`: the step is captured once in a CUDA graph over preallocated buffers and replayed; the
  current length lives in device memory, attention reads only the filled part, and nothing in the
  step synchronises with the host. Needs a method whose storage is preallocated (`kernel=triton`
  stores, see optim/kv_static.py); another method gets a `skipped` row naming the reason.
- `eager`: transformers' forward per step, as Python drives it (launch-bound on a GPU; kept,
  labelled, for methods whose storage grows per step: peers, `kernel=torch` caches).
- `compiled`: `torch.compile(mode="reduce-overhead")` over transformers' `StaticCache` (baseline
  only), the common off-the-shelf way, for scale.
- `kernel`: one layer's decode attention alone at the model's attention shapes: the method's fused
  kernel over its static store (`kernel=triton`), or SDPA over bf16 K/V for the baseline
  (scenarios/decode_kernel.py).

Per row: step time (median, p10, p90 over `repeats` x `steps` CUDA-event timings), GPU busy time
and kernels per step (profiler), `bytes_per_step` (weights + the KV bytes the cache holds for the
filled tokens: codes, scales, zero-points, windows), achieved GB/s and `bw_fraction` against the
copy bandwidth measured in the same process, and the prefill time (the report sets a compressing
store's prefill against the 16-bit store's of the same mode, context and batch: the share of the
prefill that quantizing on write costs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from optim import cache_nbytes, plain_kv_bytes

from ..config import BenchConfig
from ..errors import ConfigError
from ..methods import make_cache_fn
from ..models import load_model
from ..run.environment import device_name, resolve_device
from . import gpu_timing as gt
from .base import Scenario, positive

MODES = ("graph", "eager", "compiled", "kernel")


class NotMeasurable(Exception):
    """This method cannot be measured in this mode (a `skipped` row says why)."""


@dataclass
class DecodeScenario(Scenario):
    name: ClassVar[str] = "decode"
    needs_cuda: ClassVar[bool] = True
    measures: ClassVar[str] = "decode speed"
    decode_mode: str = "graph"
    steps: int = 32  # timed steps per repeat
    repeats: int = 4
    warmup: int = 4
    prefill_chunk: int = 4096
    profile_steps: int = 4
    # graph mode: capture the step with the model's norms, MLPs and rotary embedding compiled into
    # fused kernels (optim.pointwise_fusion), as a server's fused kernels would run them.
    fuse_pointwise: bool = True
    allow_cpu: bool = False  # functional checks of this scenario's logic on CPU (tests); never evidence

    def __post_init__(self):
        if self.decode_mode not in MODES:
            raise ConfigError(f"scenario.decode_mode={self.decode_mode!r} is not one of {MODES}")
        positive(self, "steps", "repeats", "prefill_chunk")

    def run(self, bench: BenchConfig) -> dict:
        try:
            return measure_decode(self, bench)
        except NotMeasurable as exc:
            return {"status": "skipped", "error": str(exc), "decode_mode": self.decode_mode}


def _random_ids(vocab: int, batch: int, length: int, device, seed: int) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=gen).to(device)


def _eager_driver(model, cache, chunk: int):
    from ..evaluate.scoring import forward

    state = {}

    def prefill(ids):
        one_shot = getattr(cache, "one_shot_prefill", False)
        step = ids.shape[1] if one_shot else chunk
        logits = None
        for s in range(0, ids.shape[1], step):
            logits = forward(model, ids[:, s : s + step], cache, logits_to_keep=1)
        state["next"] = logits[:, -1:].argmax(-1)

    def step():
        state["next"] = forward(model, state["next"], cache, logits_to_keep=1)[:, -1:].argmax(-1)

    return prefill, step


def _graph_driver(model, cache, total: int, chunk: int, label: str, fuse: bool):
    """Prefill eagerly, then replay one captured decode step (optim.graph_decode.GraphDecoder)."""
    from optim.graph_decode import GraphDecoder

    if not callable(getattr(cache, "reserve", None)):
        raise NotMeasurable(f"{label} grows its storage per step (no preallocated store); measure it with "
                            "decode_mode=eager, or kernel=triton where the method has a static store")
    driver = GraphDecoder(model, cache, fuse_pointwise=fuse)
    driver.reserve(total)
    state = {}

    def prefill(ids):
        state["next"] = driver.prefill(ids, chunk, logits_to_keep=1)[:, -1:].argmax(-1)

    def step():
        state["next"] = driver.step(state["next"]).argmax(-1)

    return prefill, step, driver


def _compiled_driver(model, config, bench: BenchConfig, total: int, device):
    from transformers import StaticCache

    from optim.static_kv_arena import cache_kwarg

    from ..evaluate.scoring import forward

    cache = StaticCache(config=config, max_cache_len=total)
    compiled = torch.compile(model.forward, mode="reduce-overhead")
    state = {}

    def prefill(ids):
        logits = forward(model, ids, cache, logits_to_keep=1)
        state["next"], state["pos"] = logits[:, -1:].argmax(-1), ids.shape[1]

    def step():
        # Explicit tensor positions: a Python int would specialise the compiled graph on every step.
        pos = torch.full((1, 1), state["pos"], dtype=torch.long, device=device)
        kw = {cache_kwarg(model): cache}
        out = compiled(input_ids=state["next"], position_ids=pos, use_cache=True, logits_to_keep=1, **kw)
        state["next"] = out.logits[:, -1:].argmax(-1).clone()  # graph outputs are overwritten on replay
        state["pos"] += 1

    return cache, prefill, step


def measure_attention_kernel(sc: DecodeScenario, bench: BenchConfig) -> dict:
    from hydra.utils import instantiate

    from ..models import random_weights_config
    from .decode_kernel import measure_kernel

    torch.manual_seed(bench.seed)
    device = resolve_device(bench.device)
    method = instantiate(bench.optim.method)
    if getattr(method, "kernel", "torch") != "triton" and bench.optim.name != "baseline":
        raise NotMeasurable(f"{bench.optim.name} (torch) dequantizes, then runs SDPA: it has no decode kernel of its "
                            "own; time its fused kernel with kernel=triton, or its whole step with decode_mode=eager")
    text = random_weights_config(bench.model).get_text_config(decoder=True)
    copy_gbps = gt.copy_bandwidth_gbps(device)
    row = measure_kernel(method, text, bench.batch_size, bench.seq_len, device)
    row.update(device=device_name(device), decode_mode="kernel", copy_gbps=copy_gbps)
    row["achieved_gbps"] = row["bytes_per_step"] / (row["step_ms"] / 1e3) / 1e9
    row["bw_fraction"] = row["achieved_gbps"] / copy_gbps if copy_gbps else None
    return row


def measure_decode(sc: DecodeScenario, bench: BenchConfig) -> dict:
    from hydra.utils import instantiate

    if sc.decode_mode == "kernel":
        return measure_attention_kernel(sc, bench)
    torch.manual_seed(bench.seed)
    device = resolve_device(bench.device)
    lm = load_model(bench.model, device=str(device))
    model, config = lm.model, lm.model.config
    text = config.get_text_config(decoder=True)
    method = instantiate(bench.optim.method)
    ids = _random_ids(text.vocab_size, bench.batch_size, bench.seq_len, device, bench.seed)
    total = bench.seq_len + sc.warmup + sc.repeats * sc.steps + 2 * sc.profile_steps + 8
    copy_gbps = gt.copy_bandwidth_gbps(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if callable(getattr(method, "attach", None)):
        method.attach(model)
    kernel = getattr(method, "kernel", "torch")
    driver = None
    with torch.inference_mode():
        if sc.decode_mode == "compiled":
            if bench.optim.name != "baseline":
                raise NotMeasurable("decode_mode=compiled times transformers' StaticCache: baseline only")
            cache, prefill, step = _compiled_driver(model, config, bench, total, device)
        elif sc.decode_mode == "graph":
            cache = make_cache_fn(method, config)()
            prefill, step, driver = _graph_driver(model, cache, total, sc.prefill_chunk, f"{bench.optim.name} ({kernel})",
                                                  sc.fuse_pointwise)
        else:
            cache = make_cache_fn(method, config)()
            prefill, step = _eager_driver(model, cache, sc.prefill_chunk)
        # Warm-up forward through a throwaway cache of the same method: lazy CUDA/cuBLAS set-up and
        # kernel selection would otherwise land in the first prefill's time.
        from ..evaluate.scoring import forward

        forward(model, ids[:, : min(64, ids.shape[1])], make_cache_fn(method, config)(), logits_to_keep=1)
        prefill_ms = gt.time_once(lambda: prefill(ids), device)
        kv_read = kv_context = _filled_kv_bytes(cache)  # after the prefill: the context a decode step reads
        samples = []
        for _ in range(sc.repeats):
            samples += gt.time_calls(step, device, sc.steps, warmup=sc.warmup if not samples else 0)
        busy = gt.device_busy(step, device, sc.profile_steps)
    row = gt.step_stats(samples)
    wbytes = gt.weight_bytes(model)
    row.update(
        device=device_name(device), decode_mode=sc.decode_mode, kernel=kernel, prefill_ms=prefill_ms,
        # KV bytes for the context's tokens (as in quality rows); what a preallocated store holds,
        # its unfilled capacity included, is in extra.kv_bytes_held.
        kv_bytes=kv_context, kv_bytes_16bit=plain_kv_bytes(config, bench.seq_len, bench.batch_size),
        bytes_per_step=wbytes + kv_read, copy_gbps=copy_gbps,
        extra={"weight_bytes": wbytes, "kv_bytes_read": kv_read, "kv_bytes_held": cache_nbytes(cache),
               "kernels_per_step": busy.get("kernels_per_call"), "timed_steps": len(samples),
               **({"fused_pointwise": driver.fused} if driver is not None and driver.fuse_pointwise else {})},
    )
    row["gpu_busy_ms"] = busy.get("gpu_busy_ms")
    row["achieved_gbps"] = row["bytes_per_step"] / (row["step_ms"] / 1e3) / 1e9
    row["bw_fraction"] = row["achieved_gbps"] / copy_gbps if copy_gbps else None
    if device.type == "cuda":
        row["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return row


def _filled_kv_bytes(cache) -> int:
    """KV bytes one step reads: a preallocated store says (`bytes_per_step`: the filled part only);
    a growing cache holds exactly its filled tokens."""
    filled = getattr(cache, "bytes_per_step", None)
    return int(filled()) if callable(filled) else cache_nbytes(cache)
