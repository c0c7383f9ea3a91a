"""Scenario `memory`: one allocator (an optim of kind memory) under one allocation workload.

Workloads (alloc_workloads.py), shapes from the conf/model entry (Llama-3.1-8B's in suite
`memory_gpu`), one row each:

- `fragmentation` -> metric `fragmentation` (ratio): 1 - live/reserved after every step of a
  varied-length serving workload (`requests` prompts of seq_len/32 .. seq_len tokens, each
  decoding `decode_tokens` tokens, `concurrency` at a time); median/p10/p90 over those samples.
  `extra` adds torch's own 1 - allocated/reserved, the end state, peak reserved bytes and the
  largest request the reserved memory could still serve. Needs CUDA's allocator statistics: on a
  CPU the workload runs and the row is `skipped`.
- `alloc_latency` + `mix` -> metric `alloc_us/<mix>` (us per get+put): `samples` samples of
  `inner` steps of one step's requests (kv_blocks, decode_step, prefill_step or mixed), on the
  host clock (allocator calls launch no kernels).
- `decode_alloc` -> metric `alloc_time_per_step_us`: host time inside allocator calls per step of
  a synthetic decode loop at context seq_len; `extra.step_us` is the step's time (CUDA events) and
  `extra.alloc_share` the allocator's share of it.

The allocator setting is part of the method: `optim.method.alloc_conf` (torch_expandable:
`expandable_segments:True`; empty, PyTorch's default, for the others) becomes
PYTORCH_CUDA_ALLOC_CONF at the start of the run, before the process's first CUDA call (the runner
spawns one process per run), and the memory snapshot at the end must show that it took effect,
or the run fails. Pool statistics (hit rate, bytes held, prediction hit rate) go to `extra`.

The static-arena decode comparison of the old memory benchmark is the decode scenario's now.
"""

from __future__ import annotations

import inspect
import os
import statistics
from dataclasses import asdict, dataclass, field
from typing import ClassVar, Optional

import torch

from optim.torch_caching import segments_expandable, wants_expandable

from ..config import BenchConfig
from ..errors import ConfigError
from ..models import random_weights_config
from ..run.environment import device_name, resolve_device
from . import alloc_workloads as aw
from . import gpu_timing as gt
from .base import Scenario, metric_row, positive

WORKLOADS = ("fragmentation", "alloc_latency", "decode_alloc")
ALLOC_CONF_VARS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")  # the second: newer torch's name


@dataclass
class MemoryScenario(Scenario):
    name: ClassVar[str] = "memory"
    needs_cuda: ClassVar[bool] = True
    measures: ClassVar[str] = "allocator workloads"
    optim_kind: ClassVar[str] = "memory"
    model_from_conf: ClassVar[bool] = True  # its shapes come from the model's config
    workload: str = "fragmentation"
    mix: Optional[str] = None  # alloc_latency only: kv_blocks | decode_step | prefill_step | mixed
    model_layers: int = 8  # layers whose requests one step makes
    samples: int = 30  # alloc_latency, decode_alloc: timed samples
    inner: int = 200  # alloc_latency: steps of the mix per sample
    steps: int = 10  # decode_alloc: decode steps per sample
    requests: int = 40  # fragmentation: requests served
    concurrency: int = 4  # fragmentation: requests in flight
    decode_tokens: list = field(default_factory=lambda: [32, 160])  # fragmentation: tokens per request (min, max)
    allow_cpu: bool = False  # functional checks of this scenario's logic on CPU (tests); never evidence

    def __post_init__(self):
        if self.workload not in WORKLOADS:
            raise ConfigError(f"scenario.workload={self.workload!r} is not one of {WORKLOADS}")
        if self.workload == "alloc_latency" and self.mix not in aw.MIXES:
            raise ConfigError(f"workload alloc_latency needs scenario.mix, one of {aw.MIXES}; got {self.mix!r}")
        if self.workload != "alloc_latency" and self.mix is not None:
            raise ConfigError(f"scenario.mix is for workload alloc_latency only (workload={self.workload!r})")
        positive(self, "model_layers", "samples", "inner", "steps", "requests", "concurrency")
        lo, hi = (list(self.decode_tokens) + [0, 0])[:2]
        if len(self.decode_tokens) != 2 or not 1 <= lo <= hi:
            raise ConfigError(f"scenario.decode_tokens must be [min, max], 1 <= min <= max; got {self.decode_tokens}")
        if self.concurrency >= self.requests:
            raise ConfigError(f"scenario.concurrency ({self.concurrency}) must be below requests ({self.requests})")

    def check(self, bench: BenchConfig) -> None:
        super().check(bench)
        if bench.batch_size != 1:
            raise ConfigError("scenario memory runs single-sequence workloads; batch_size must be 1")

    def run(self, bench: BenchConfig) -> dict:
        from hydra.utils import instantiate

        alloc_conf = str(dict(bench.optim.method).get("alloc_conf") or "")
        set_alloc_conf(alloc_conf)  # first: before this process's first CUDA call (importing torch is none)
        device = resolve_device(bench.device)
        if device.type == "cuda" and device.index is None:  # snapshots name devices by index
            device = torch.device("cuda", torch.cuda.current_device())
        dims = aw.Dims.of(random_weights_config(bench.model), self.model_layers)
        alloc = aw.Allocator(instantiate(_on_device(dict(bench.optim.method), str(device))))
        torch.manual_seed(bench.seed)
        row = getattr(self, f"_{self.workload}")(alloc, dims, bench, device)
        expandable = segments_expandable(device)
        if expandable is not None and expandable != wants_expandable(alloc_conf):
            raise RuntimeError(f"allocator setting not in effect: asked for {alloc_conf or 'the default'!r}, segments "
                               f"are {'' if expandable else 'not '}expandable (was CUDA initialised before the run? "
                               "runner.isolation=inline shares one process between runs)")
        row["extra"].update(alloc_conf=alloc_conf, expandable_segments=expandable, dims=asdict(dims), **alloc.extra())
        row["device"] = device_name(device)
        return row

    def _fragmentation(self, alloc, dims, bench, device) -> dict:
        prompts = (max(1, bench.seq_len // 32), bench.seq_len)
        res = aw.serving_workload(alloc, device, dims, self.requests, self.concurrency, prompts,
                                  tuple(self.decode_tokens), seed=bench.seed)
        series, torch_series = res.pop("frag_live_series", None), res.pop("frag_torch_series", None)
        if series is None:
            return {"status": "skipped", "metric": "fragmentation", "metric_unit": "ratio", "extra": res,
                    "error": "no caching-allocator statistics on CPU (the workload ran; fragmentation needs CUDA)"}
        return metric_row("fragmentation", "ratio", series, frag_torch_median=statistics.median(torch_series),
                          prompt_tokens=list(prompts), **res)

    def _alloc_latency(self, alloc, dims, bench, device) -> dict:
        mix = aw.shape_mixes(dims, bench.seq_len)[self.mix]
        us = aw.alloc_latency(alloc, mix, device, self.samples, self.inner)
        return metric_row(f"alloc_us/{self.mix}", "us", us, requests_per_step=len(mix), steps_per_sample=self.inner)

    def _decode_alloc(self, alloc, dims, bench, device) -> dict:
        loop = aw.DecodeLoop(dims, device, bench.seq_len)
        spent: list[float] = []  # host seconds inside allocator calls, one entry per sample

        def sample():
            spent.append(sum(loop.step(alloc) for _ in range(self.steps)))

        step_us = [ms * 1e3 / self.steps for ms in gt.time_calls(sample, device, self.samples, warmup=1)]
        alloc_us = [s / self.steps * 1e6 for s in spent[-self.samples:]]  # the warm-up sample left out
        share = [a / s for a, s in zip(alloc_us, step_us)]
        return metric_row("alloc_time_per_step_us", "us", alloc_us, step_us=statistics.median(step_us),
                          alloc_share=statistics.median(share), steps_per_sample=self.steps, context=bench.seq_len)


def set_alloc_conf(conf: str) -> None:
    """Make this process's caching allocator run under exactly `conf` ("" = PyTorch's default).
    The allocator reads the variable when CUDA initialises, so this must come before any CUDA call."""
    for var in ALLOC_CONF_VARS:
        os.environ.pop(var, None)
    if conf:
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = conf


def _on_device(node, device: str):
    """The method config with `device` given to each class in it that takes one (pools hold
    memory of one device; a predictive manager's pool is a node inside its config)."""
    from hydra.utils import get_class

    if not isinstance(node, dict):
        return node
    out = {k: _on_device(v, device) for k, v in node.items()}
    target = out.get("_target_")
    if isinstance(target, str) and "device" in inspect.signature(get_class(target)).parameters:
        out["device"] = device
    return out
