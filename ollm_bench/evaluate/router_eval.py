"""C16 ("gets better over time"), measured live: a fixed workload of real requests (one document
per content type) goes through the attention router run after run; each choice is executed on
Gemma-3-270M and its measured cost (prefill seconds) and quality loss (perplexity vs full
attention on the same tokens, cache in the loop) are fed back. `optim.attention_router.
regret_over_runs` compares every run with the best fixed mechanism in hindsight.

    python -m ollm_bench.evaluate.router_eval [--seq-len 1024] [--runs 5] [--out results/attention/router_regret.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from optim import AttentionRouter, FullPrecisionKV, make_mechanism
from optim.attention_router import regret_over_runs

from ..data import load_documents
from ..run.environment import device_name
from ..models import load_pretrained
from .scoring import run_pass

CONTENTS = ("code", "prose", "structured", "repetitive")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--score-tokens", type=int, default=128)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("results/attention/router_regret.json"))
    args = p.parse_args(argv)
    torch.set_flush_denormal(True)
    lm = load_pretrained("gemma3_270m")
    model = lm.model
    make_cache = lambda: FullPrecisionKV().make_cache(model.config)  # noqa: E731
    workload, full_nll = [], {}
    for i, content in enumerate(CONTENTS):
        ids = torch.tensor([d.ids for d in load_documents(content, lm.tokenizer, args.seq_len, 1, seed=7)])
        workload.append({"text": lm.tokenizer.decode(ids[0, 1:]), "seq_len": args.seq_len, "ids": ids, "i": i})
    mechanisms = {}

    def measure(name: str, req: dict) -> tuple[float, float]:
        mech = mechanisms.setdefault(name, make_mechanism(name))
        mech.attach(model, seq_len=req["seq_len"])
        try:
            t0 = time.perf_counter()
            res = run_pass(model, make_cache, req["ids"], args.score_tokens, 512, 64, 0)
            cost = time.perf_counter() - t0
        finally:
            mech.detach(model)
        if req["i"] not in full_nll:  # quality is relative to full attention on the same tokens
            full = mechanisms.setdefault("attn_full", make_mechanism("attn_full"))
            full.attach(model, seq_len=req["seq_len"])
            try:
                full_nll[req["i"]] = run_pass(model, make_cache, req["ids"], args.score_tokens, 512, 64, 0).nll[0]
            finally:
                full.detach(model)
        loss = math.exp((res.nll[0] - full_nll[req["i"]]) / args.score_tokens) - 1
        print(f"[router_eval] {name:16s} request {req['i']} cost {cost:.2f} s quality loss {loss:+.2%}", flush=True)
        return cost, loss

    router = AttentionRouter()
    result = regret_over_runs(router, workload, measure, runs=args.runs)
    result.update(device=device_name(torch.device("cpu")), seq_len=args.seq_len, score_tokens=args.score_tokens,
                  workload=[{"content": c, "seq_len": args.seq_len} for c in CONTENTS],
                  explain=router.explain() if hasattr(router, "explain") else "")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    for run in result["runs"]:
        print(f"run {run['run']}: cost {run['cost']:.2f} s, regret {run['regret']:+.2f} s, picks {run['picks']}")
    print(f"best fixed in hindsight: {result['best_fixed']} {result['best_fixed_cost']:.2f} s -> {args.out}")
    return result


if __name__ == "__main__":
    main()
