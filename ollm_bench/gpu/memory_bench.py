"""GPU benchmark for the memory claims (C1-C5) and static-KV decode latency.

    python -m ollm_bench.gpu.memory_bench --out DIR            # full run on a CUDA machine (~5 min)
    python -m ollm_bench.gpu.memory_bench --out DIR --smoke    # tiny sizes on CPU, seconds

Writes DIR/memory_gpu.csv, one row per measurement (device, torch/transformers versions, n,
median, p10, p90 and status). Needs only torch, transformers and `optim`: no hydra, no pandas.
Each part runs in its own try/except, so a failing part leaves a `failed` row and the rest runs;
the CSV is rewritten after every part, so a killed run keeps what it measured.

Parts: alloc (C2/C5 latency), frag (C1/C4, one fresh process per allocator setting, since
PYTORCH_CUDA_ALLOC_CONF is read once per process), c3 (allocator time share of a decode loop),
decode (DynamicCache vs StaticKVArena eager / CUDA graph vs StaticCache + torch.compile).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from . import alloc_workloads as aw
from . import decode_bench as db

PARTS = ("alloc", "frag", "c3", "decode")
FRAG_VARIANTS = {"default": "", "expandable": "expandable_segments:True", "pool": ""}
REPO_ROOT = Path(__file__).resolve().parents[2]


def summarize(samples: list[float]) -> dict:
    xs = sorted(samples)
    if len(xs) == 1:
        return {"n": 1, "median": xs[0], "p10": xs[0], "p90": xs[0], "iqr": 0.0}
    dec = statistics.quantiles(xs, n=10, method="inclusive")
    qrt = statistics.quantiles(xs, n=4, method="inclusive")
    return {"n": len(xs), "median": statistics.median(xs), "p10": dec[0], "p90": dec[8], "iqr": qrt[2] - qrt[0]}


class Bench:
    def __init__(self, args):
        self.args, self.rows = args, []
        self.device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
        self.deadline = time.monotonic() + args.budget_s
        import transformers

        self.common = {
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "torch": torch.__version__, "transformers": transformers.__version__,
            "smoke": bool(args.smoke),
        }
        self.dims = aw.TINY if args.smoke else aw.Dims()

    def add(self, part: str, claim: str, case: str, method: str, metric: str, unit: str,
            samples: list[float] | None = None, value: float | None = None, status: str = "ok", **extra):
        row = {"part": part, "claim": claim, "case": case, "method": method, "metric": metric, "unit": unit,
               "status": status, **self.common}
        if samples:
            row.update(summarize(samples))
        elif value is not None:
            row.update(n=1, median=value)
        row.update({k: v for k, v in extra.items() if not isinstance(v, (list, dict))})
        self.rows.append(row)

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def write(self) -> Path:
        out = Path(self.args.out) / "memory_gpu.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        keys = list(dict.fromkeys(k for row in self.rows for k in row))
        tmp = out.with_suffix(".csv.partial")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(out)
        return out

    # -- parts ---------------------------------------------------------------------------------

    def part_alloc(self):
        """C2/C5: per get+put latency, torch.empty vs pool vs predictive, per shape mix."""
        samples, inner = (3, 5) if self.args.smoke else (30, 200)
        mixes = aw.shape_mixes(self.dims, ctx=64 if self.args.smoke else 2048)
        mixes["mixed"] = [r for mix in mixes.values() for r in mix]
        for name, mix in mixes.items():
            base = None
            for kind, claim in (("torch", "C2"), ("pool", "C2"), ("predictive", "C5")):
                times, extra = aw.alloc_latency(kind, mix, self.device, samples, inner)
                med = statistics.median(times)
                base = med if kind == "torch" else base
                self.add("alloc", claim, name, kind, "get_put_latency", "us", times,
                         ratio_vs_torch_empty=round(med / base, 4), requests_per_step=len(mix), **extra)

    def part_frag(self):
        """C1/C4: the same serving workload in a fresh process per allocator setting. The processes
        run side by side: each has its own caching allocator, so their statistics do not mix."""
        procs = {}
        # Smoke (CPU, nothing measured) runs every variant in one worker: same code path, one
        # interpreter start instead of three.
        groups = {",".join(FRAG_VARIANTS): ""} if self.args.smoke else FRAG_VARIANTS
        for variant, conf in groups.items():
            env = dict(os.environ)
            env.pop("PYTORCH_CUDA_ALLOC_CONF", None)
            if conf:
                env["PYTORCH_CUDA_ALLOC_CONF"] = conf
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
            cmd = [sys.executable, "-m", "ollm_bench.gpu.memory_bench", "--frag-worker", variant]
            cmd += ["--smoke"] if self.args.smoke else []
            procs[variant] = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, text=True)
        for variant, proc in procs.items():
            try:
                out, err = proc.communicate(timeout=max(30.0, min(240.0, self.time_left())))
                if proc.returncode != 0:
                    raise RuntimeError(f"worker exited {proc.returncode}: {err.strip()[-600:]}")
                results = json.loads(out.strip().splitlines()[-1])
            except Exception as exc:  # one allocator setting failing keeps the others' rows
                proc.kill()
                self.add("frag", "C1/C4", "serving", variant, "fragmentation", "ratio", status="failed", error=_err(exc))
                continue
            for name, res in results.items():
                self._frag_rows(name, res)

    def _frag_rows(self, variant: str, res: dict) -> None:
        case = f"serving_{res['requests']}req"
        keep = {k: v for k, v in res.items() if not k.startswith(("frag_", "largest_"))}
        if "frag_live_series" not in res:
            self.add("frag", "C1/C4", case, variant, "fragmentation", "ratio", status="skipped",
                     error="CPU: no caching-allocator statistics (the workload itself ran)", **keep)
            return
        for metric in ("frag_live", "frag_torch"):
            series = res[f"{metric}_series"]
            self.add("frag", "C1/C4", case, variant, f"{metric}_over_run", "ratio", series,
                     mean=statistics.fmean(series), max=max(series), **keep)
            self.add("frag", "C1/C4", case, variant, f"{metric}_end", "ratio", value=res[f"{metric}_end"], **keep)
        for metric in ("largest_fit_bytes", "largest_fit_torch_bytes"):
            self.add("frag", "C1/C4", case, variant, metric, "bytes", value=res[metric], **keep)

    def part_c3(self):
        """C3: host time inside allocator calls as a share of a decode step."""
        ctx, samples, steps = (64, 3, 2) if self.args.smoke else (2048, 30, 10)
        loop = aw.DecodeLoop(self.dims, self.device, ctx)
        for kind in ("torch", "pool", "predictive"):
            alloc = aw.Allocator(kind, self.device)
            for _ in range(3):
                loop.step(alloc)
            step_us, alloc_us = [], []
            for _ in range(samples):
                aw._sync(self.device)
                t0, spent = time.perf_counter(), 0.0
                for _ in range(steps):
                    spent += loop.step(alloc)
                aw._sync(self.device)
                step_us.append((time.perf_counter() - t0) / steps * 1e6)
                alloc_us.append(spent / steps * 1e6)
            shares = [a / s for a, s in zip(alloc_us, step_us)]
            extra = alloc.extra()
            self.add("c3", "C3", f"decode_loop_ctx{ctx}", kind, "step_time", "us", step_us, **extra)
            self.add("c3", "C3", f"decode_loop_ctx{ctx}", kind, "alloc_time", "us", alloc_us, **extra)
            self.add("c3", "C3", f"decode_loop_ctx{ctx}", kind, "alloc_share", "ratio", shares, **extra)

    def part_decode(self):
        """Decode step latency per (model, batch, context, cache method)."""
        a = self.args
        batches = [2] if a.smoke else a.batches
        cases = db.decode_cases(a.smoke, batches, a.contexts, {tuple(c) for c in a.compile_cases})
        warmup, steps = (2, 5) if a.smoke else (db.WARMUP, db.STEPS)
        dtype = torch.float32 if a.smoke else torch.bfloat16
        models: dict = {}
        for name, cfg, batch, ctx, methods in cases:
            case = f"{name}_b{batch}_ctx{ctx}"
            for method in methods:
                common = dict(model=name, layers_note=db.LAYERS_NOTE.get(name, ""), batch=batch, ctx=ctx)
                if self.device.type != "cuda" and method in ("arena_graph", "static_compile"):
                    self.add("decode", "arena", case, method, "decode_step", "ms", status="skipped",
                             error="needs CUDA", **common)
                    continue
                if self.time_left() < (120 if method == "static_compile" else 20):
                    self.add("decode", "arena", case, method, "decode_step", "ms", status="skipped",
                             error=f"time budget (--budget-s {a.budget_s}) spent", **common)
                    continue
                try:
                    if name not in models:
                        models.clear()  # one model on the device at a time
                        torch.cuda.empty_cache() if self.device.type == "cuda" else None
                        models[name] = db.build_model(cfg, self.device, dtype)
                    res = db.run_method(models[name], method, batch, ctx, self.device, warmup, steps)
                    self.add("decode", "arena", case, method, "decode_step", "ms", res.pop("samples_ms"),
                             **common, **res)
                except Exception as exc:  # one case failing (e.g. OOM, compile) must not end the part
                    status = "oom" if isinstance(exc, torch.OutOfMemoryError) else "failed"
                    self.add("decode", "arena", case, method, "decode_step", "ms", status=status,
                             error=_err(exc), **common)
                    torch.cuda.empty_cache() if self.device.type == "cuda" else None
            self.write()


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


def frag_worker(variants: str, smoke: bool) -> None:
    """Print {variant: workload result} as one JSON line (the parent reads the last line)."""
    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    d = aw.TINY if smoke else aw.Dims()
    kw = dict(n_requests=6, concurrency=2, prompt_range=(8, 32), decode_range=(4, 12)) if smoke else \
        dict(n_requests=40, concurrency=4, prompt_range=(64, 2048), decode_range=(32, 160))
    out = {}
    for variant in variants.split(","):
        out[variant] = aw.serving_workload("pool" if variant == "pool" else "torch", device, d, **kw)
        out[variant]["alloc_conf"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    print(json.dumps(out))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/memory", help="directory for memory_gpu.csv")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU; CUDA-only parts are skipped")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {PARTS}")
    p.add_argument("--budget-s", type=float, default=330.0, help="wall-clock budget; later decode cases skip")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--compile-cases", nargs=3, action="append", metavar=("MODEL", "BATCH", "CTX"),
                   help="decode cases that also run StaticCache+compile (each compiles, ~1 min); MODEL may be *")
    p.add_argument("--frag-worker", help=argparse.SUPPRESS)  # internal: comma list of FRAG_VARIANTS
    args = p.parse_args(argv)
    if args.compile_cases is None:
        args.compile_cases = [("gemma3_270m", "1", "1024"), ("gemma3_270m", "8", "1024"), ("llama31_8b", "1", "1024")]
    args.compile_cases = [(m, int(b), int(c)) for m, b, c in args.compile_cases]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.frag_worker:
        frag_worker(args.frag_worker, args.smoke)
        return 0
    bench = Bench(args)
    wanted = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(wanted) - set(PARTS))
    if unknown:
        raise SystemExit(f"unknown parts {unknown}; choose from {PARTS}")
    for part in wanted:
        t0 = time.monotonic()
        try:
            getattr(bench, f"part_{part}")()
        except Exception as exc:  # a failed part is a row, not the end of the run
            traceback.print_exc()
            bench.add(part, "", "", "", "", "", status="failed", error=_err(exc))
        print(f"[memory_bench] {part}: {time.monotonic() - t0:.1f}s", flush=True)
        path = bench.write()
    print(f"[memory_bench] wrote {len(bench.rows)} rows to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
