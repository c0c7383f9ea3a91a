"""C16 ("gets better over time") as an experiment that can go either way.

One workload (one document per content type at --seq-len), the same requests every run:
- router arm: for each of --seeds, a fresh `AttentionRouter(seed=s, explore_order="random")` serves
  the workload --runs times in a row, learning from every pass's measured cost and quality loss
  (random exploration order: no mechanism is favoured, or left for last, by the order it is tried);
- fixed arm, on separate passes: each feasible candidate serves the whole workload --fixed-repeats
  times (in a shuffled order per repeat); the best fixed choice in hindsight is picked from these
  runs only, never from the router's own measurements;
- the arms alternate (router seed i, then fixed repeat i, ...), so machine drift hits both;
- cost of a pass: seconds of prefill + scoring on `--clock`: `process` (CPU seconds of this process,
  default: on a shared machine other jobs inflate wall time far more than CPU time) or `wall`;
  quality loss: exp((NLL - NLL_full) / tokens) - 1 on the same tokens, NLL_full from one
  full-attention pass per request (CPU passes are deterministic, so quality is measured once; cost
  is measured on every pass).

Output, a JSON file (the verdict is computed from it by `ollm_bench.report.claims.router`):
  command, device, model, seq_len, score_tokens, clock, quality_budget, candidates, contents;
  router: [{seed, run, cost_s: [per request], loss: [per request], picks: [per request]}, ...];
  fixed: [{mechanism, repeat, cost_s: [per request], loss: [per request]}, ...].

    python -m ollm_bench.evaluate.router_eval [--model gemma3_270m|tiny] [--contents code,prose,...]
        [--seq-len 1024] [--seeds 3] [--runs 7] [--fixed-repeats 2] [--clock process|wall]
        [--out results/attention/router_learning.json]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from optim import AttentionRouter, FullPrecisionKV
from optim.attention_router import DEFAULT_CANDIDATES

from ..data import load_documents
from ..models import ByteTokenizer, LoadedModel, build_random_model, load_pretrained, tiny_gemma3_config
from ..run.environment import device_name
from .scoring import run_pass

CONTENTS = ("code", "prose", "structured", "repetitive")
Measure = Callable[[str, dict], tuple[float, float]]  # (mechanism, request) -> (cost, quality loss)


def _serve(choose: Callable[[dict], str], workload: list[dict], measure: Measure, learn=None) -> dict:
    costs, losses, picks = [], [], []
    for req in workload:
        name = choose(req)
        cost, loss = measure(name, req)
        if learn is not None:
            learn(cost, loss)
        costs.append(cost)
        losses.append(loss)
        picks.append(name)
    return {"cost_s": costs, "loss": losses, "picks": picks}


def learning_experiment(workload: list[dict], measure: Measure, seeds: list[int], runs: int, fixed_repeats: int,
                        candidates=DEFAULT_CANDIDATES, quality_budget: float = 0.02) -> dict:
    """The two arms of the module docstring; `workload` items carry `text` and `seq_len`."""
    probe = AttentionRouter(candidates=candidates)
    fixed_names = [n for n, m in probe.mechanisms.items()
                   if all(m.window is None or m.window <= req["seq_len"] for req in workload)]
    router_rows, fixed_rows = [], []
    for i in range(max(len(seeds), fixed_repeats)):
        if i < len(seeds):
            router = AttentionRouter(candidates=candidates, quality_budget=quality_budget, seed=seeds[i],
                                     explore_order="random")
            for run in range(runs):
                served = _serve(lambda req: router.choose(req["text"], req["seq_len"]), workload, measure, router.observe)
                router_rows.append({"seed": seeds[i], "run": run, **served})
        if i < fixed_repeats:
            order = list(fixed_names)
            random.Random(i).shuffle(order)
            for name in order:
                served = _serve(lambda req: name, workload, measure)
                fixed_rows.append({"mechanism": name, "repeat": i, "cost_s": served["cost_s"], "loss": served["loss"]})
    return {"quality_budget": quality_budget, "candidates": list(candidates), "router": router_rows,
            "fixed": sorted(fixed_rows, key=lambda r: (r["mechanism"], r["repeat"]))}


def model_measure(lm: LoadedModel, workload: list[dict], score_tokens: int, clock=time.process_time) -> Measure:
    """Measure a mechanism on a request with `lm`: timed pass, quality loss vs full attention."""
    model, mechanisms, full_nll = lm.model, AttentionRouter().mechanisms, {}
    make_cache = lambda: FullPrecisionKV().make_cache(model.config)  # noqa: E731

    def scored(name: str, req: dict):
        mech = mechanisms[name]
        mech.attach(model, seq_len=req["seq_len"])
        try:
            t0 = clock()
            res = run_pass(model, make_cache, req["ids"], score_tokens, 512, 64, 0)
            return clock() - t0, res.nll[0]
        finally:
            mech.detach(model)

    for req in workload:
        full_nll[req["i"]] = scored("attn_full", req)[1]

    def measure(name: str, req: dict) -> tuple[float, float]:
        cost, nll = scored(name, req)
        loss = math.exp((nll - full_nll[req["i"]]) / score_tokens) - 1
        print(f"[router_eval] {name:16s} {req['content']:10s} cost {cost:.3f} s quality loss {loss:+.2%}", flush=True)
        return cost, loss

    return measure


def _model(name: str) -> LoadedModel:
    if name == "tiny":  # random weights: exercises the protocol, its numbers mean nothing
        return LoadedModel(build_random_model(tiny_gemma3_config(init_std=0.2)).eval(), ByteTokenizer(), "tiny")
    return load_pretrained(name)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gemma3_270m")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--score-tokens", type=int, default=128)
    p.add_argument("--contents", default=",".join(CONTENTS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--runs", type=int, default=7)  # 5 candidates to explore per context, then 2 learned runs
    p.add_argument("--fixed-repeats", type=int, default=2)
    p.add_argument("--clock", choices=("process", "wall"), default="process")
    p.add_argument("--out", type=Path, default=Path("results/attention/router_learning.json"))
    args = p.parse_args(argv)
    torch.set_flush_denormal(True)
    lm = _model(args.model)
    workload = []
    contents = args.contents.split(",")
    for i, content in enumerate(contents):
        doc = load_documents(content, lm.tokenizer, args.seq_len, 1, seed=7)[0]
        workload.append({"text": lm.tokenizer.decode(doc.ids[1:]), "seq_len": args.seq_len, "i": i, "content": content,
                         "ids": torch.tensor([doc.ids])})
    clock = time.process_time if args.clock == "process" else time.perf_counter
    result = learning_experiment(workload, model_measure(lm, workload, args.score_tokens, clock),
                                 list(range(args.seeds)), args.runs, args.fixed_repeats)
    header = {"command": shlex.join(["python", "-m", "ollm_bench.evaluate.router_eval", *(sys.argv[1:] if argv is None else argv)]),
              "device": device_name(torch.device("cpu")), "model": args.model, "seq_len": args.seq_len,
              "score_tokens": args.score_tokens, "clock": args.clock, "contents": contents}
    result = header | result
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"[router_eval] {len(result['router'])} router runs, {len(result['fixed'])} fixed runs -> {args.out}")
    return result


if __name__ == "__main__":
    main()
