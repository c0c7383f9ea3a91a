"""C16: the router-learning experiment and its verdict can go either way. Verdicts from hand-built
experiment files; the protocol (separate fixed runs, seeded exploration) with a synthetic cost
model; the real driver once on a tiny random model."""

import json

import pytest

from ollm_bench.evaluate.router_eval import learning_experiment, main
from ollm_bench.report.claims import evaluate
from ollm_bench.report.claims.router import learning_summary
from tests.claims_rows import claim

REQUESTS = 2


def experiment(router_costs, fixed=None, losses=None, budget=0.02):
    """`router_costs`: per seed, per run, the cost of each request; fixed: mechanism -> per repeat costs."""
    fixed = fixed or {"attn_full": [[3.0, 3.0]] * 3, "attn_sliding": [[2.5, 2.5], [2.6, 2.4], [2.5, 2.6]]}
    return {"quality_budget": budget, "model": "m", "device": "cpu", "seq_len": 1024, "contents": ["a", "b"],
            "router": [{"seed": s, "run": r, "cost_s": c, "loss": (losses or {}).get((s, r), [0.0] * REQUESTS),
                        "picks": ["attn_sliding"] * REQUESTS} for s, runs in enumerate(router_costs) for r, c in enumerate(runs)],
            "fixed": [{"mechanism": m, "repeat": i, "cost_s": c, "loss": [0.0] * REQUESTS}
                      for m, reps in fixed.items() for i, c in enumerate(reps)]}


def judge(tmp_path, data):
    (tmp_path / "attention").mkdir(exist_ok=True)
    (tmp_path / "attention" / "router_learning.json").write_text(json.dumps(data))
    return evaluate([claim("C16")], tmp_path)


LEARNS = [[[4.0, 4.0], [3.8, 4.1], [3.0, 3.0], [2.5, 2.5], [2.5, 2.4], [2.5, 2.5]],
          [[4.2, 3.9], [4.0, 4.0], [3.1, 2.9], [2.6, 2.5], [2.5, 2.5], [2.4, 2.5]],
          [[3.9, 4.0], [4.1, 3.9], [3.0, 3.1], [2.5, 2.6], [2.5, 2.5], [2.5, 2.6]]]


@pytest.mark.parametrize("router_costs,losses,expected", [
    (LEARNS, None, "reproduced"),
    ([[[5.0, 5.0]] * 6] * 3, None, "not reproduced"),  # no change over the runs
    ([[[4.0, 4.0]] * 2 + [[3.5, 3.5]] * 4, [[4.1, 4.0]] * 2 + [[3.4, 3.6]] * 4, [[4.0, 3.9]] * 2 + [[3.5, 3.5]] * 4],
     None, "not reproduced"),  # gets better, but stays worse than always picking attn_sliding (5.0 s)
    ([[[4.0, 4.0]] * 3 + [[2.5, 2.5]] * 3, [[2.5, 2.5]] * 3 + [[4.0, 4.0]] * 3, [[4.0, 4.0]] * 3 + [[2.5, 2.5]] * 3],
     None, "inconclusive"),  # seeds disagree
    (LEARNS, {(s, r): [0.5, 0.0] for s in range(3) for r in (4, 5)}, "not reproduced"),  # fast late runs break quality
])
def test_c16_verdict(tmp_path, router_costs, losses, expected):
    table = judge(tmp_path, experiment(router_costs, losses=losses))
    assert list(table.verdict) == [expected], table.evidence[0]


def test_c16_needs_the_experiment(tmp_path):
    table = evaluate([claim("C16")], tmp_path)
    assert list(table.verdict) == ["no data"] and table.value.isna().all()
    assert list(judge(tmp_path, experiment([[[1.0, 1.0]] * 3] * 2)).verdict) == ["no data"]  # 3 runs < 2 x 2


def test_quality_violation_is_charged_a_full_attention_rerun():
    data = experiment([[[2.0, 2.0]] * 4] * 2, losses={(0, 3): [0.5, 0.0]})
    s = learning_summary(data, k=1)
    assert s["late"] == [2.0 + 2.0 + 3.0, 4.0] and s["best"] == "attn_sliding"


def synthetic_world(calls):
    """attn_sliding breaks quality on request 1; attn_sparse is the cheapest mechanism that never does."""
    cost = {"attn_full": 3.0, "attn_sliding": 1.0, "attn_sparse": 1.5, "attn_multiscale": 2.0, "attn_hybrid": 2.5}

    def measure(name, req):
        calls.append(name)
        return cost[name], 0.3 if (name == "attn_sliding" and req["i"] == 1) else 0.0

    return measure


WORKLOAD = [{"text": "def f(x):\n    return x\n" * 40, "seq_len": 4096, "i": 0},
            {"text": "The river bends. " * 80, "seq_len": 4096, "i": 1}]


def test_protocol_fixed_arm_is_measured_apart_and_exploration_is_seeded(tmp_path):
    calls = []
    data = learning_experiment(WORKLOAD, synthetic_world(calls), seeds=[0, 1, 2], runs=7, fixed_repeats=2)
    router_calls = 3 * 7 * len(WORKLOAD)
    assert len(calls) == router_calls + 2 * 5 * len(WORKLOAD)  # every fixed run is its own measurement
    assert {r["mechanism"] for r in data["fixed"]} == set(data["candidates"]) and len(data["fixed"]) == 10
    explored = {seed: [r["picks"][0] for r in data["router"] if r["seed"] == seed][:5] for seed in (0, 1, 2)}
    assert all(sorted(e) == sorted(data["candidates"]) for e in explored.values())  # each tried once, first
    assert len({tuple(e) for e in explored.values()}) == 3  # in a different order for each seed
    assert list(judge(tmp_path, data | {"contents": ["code", "prose"]}).verdict) == ["reproduced"]
    s = learning_summary(data, k=2)
    assert s["best"] == "attn_sparse"


def test_driver_on_a_tiny_model(tmp_path):
    out = tmp_path / "attention" / "router_learning.json"
    main(["--model", "tiny", "--seq-len", "600", "--score-tokens", "32", "--seeds", "2", "--runs", "4",
          "--fixed-repeats", "2", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["command"].startswith("python -m ollm_bench.evaluate.router_eval --model tiny")
    assert len(data["router"]) == 8 and {r["mechanism"] for r in data["fixed"]} == set(data["candidates"])
    assert all(len(r["cost_s"]) == 4 and all(c > 0 for c in r["cost_s"]) for r in data["router"] + data["fixed"])
    assert [v for v in evaluate([claim("C16")], tmp_path).verdict] != ["no data"]
