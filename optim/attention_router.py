"""`attn_router`: picks an attention mechanism per request from content, length, request kind and
device, under task-level quality budgets, and learns from measured history.

Context of a request = (content class from `content_classifier`, length bucket, request kind from
`request_kind` (retrieval: it asks about earlier text; continuation: anything else; a harness may
declare it), device type, model layout). The model is part of it because a mechanism changes only
the layers the model runs with full attention: 3 of 18 on Gemma-3-270M, all 30 on SmolLM2-135M, so
a loss measured on one says little about the other.
For each context the router keeps every measurement the harness reports through `observe()`:
cost (seconds, or any lower-is-better number measured the same way for every mechanism) and, when
measured, a quality loss with its metric: relative perplexity change (ppl_opt / ppl_full - 1, the
default) or a task metric's drop in points (exact_match, acc: +100 when full attention answered
right and the mechanism wrong). `quality_evidence` turns the losses of one (mechanism, metric,
context) into a verdict against that metric's budget (`quality_budget`, 2 %; `accuracy_budget`,
2 points): fails (mean beyond budget), proven (>= `min_observations` and the upper end of a 95 %
interval within budget: Wilson for right/wrong outcomes, t for perplexity), or unproven. Then:

1. infeasible: mechanisms whose window is longer than the request (they would equal full attention
   while claiming otherwise) are skipped;
2. guard: a mechanism that fails any metric measured for (request kind, content, length bucket,
   model) is excluded, e.g. a cloze-accuracy drop excludes it even when its perplexity loss is small
   (quality is looked up across devices: GPU speed runs reuse the CPU quality runs);
3. protection: for a retrieval request, a mechanism that drops keys at this length (density < 1:
   sliding window, strided or dilated blocks, local heads) is allowed only when proven on a task
   accuracy metric for retrieval requests of that context; no exploration there, since exploring
   is exactly the failure to avoid. With `proven_only` every request kind needs proof (a router
   judged on what it learned: `ollm_bench tasks`);
4. exploration: untried mechanisms are tried first, cheapest expected first (fewest attended
   pairs, `density()`), so a broken-but-cheap mechanism is measured once and then excluded;
   `explore_order="random"` tries them in the seeded random order instead (experiments that must
   not favour one mechanism by the order it is tried in);
5. exploitation: otherwise the lowest `mean_cost - exploration * scale * sqrt(ln N / n)`.
Ties are broken by candidate index, or, with `seed` set, by a seeded random ranking of the
candidates. (In the default order attn_full, the densest, is always explored last.)
Full attention is always allowed, so there is always a choice. History persists to JSON.

C16 ("gets better over time") is measured by `ollm_bench/evaluate/router_eval.py`: seeded random
exploration, and the best fixed mechanism timed on separate runs. `regret_over_runs` is a quick
in-process regret curve on one workload (its hindsight table reuses the router's measurements).
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
from dataclasses import dataclass, field
from typing import Callable, ClassVar

from .attn_hybrid import make_mechanism
from .base import layer_specs, text_config
from .content_classifier import classify
from .quality_evidence import Evidence, evidence, is_accuracy
from .request_kind import request_kind

BUCKETS = (512, 2048, 8192, 32768, 131072)
DEFAULT_CANDIDATES = ("attn_full", "attn_sliding", "attn_sparse", "attn_multiscale", "attn_hybrid")


def length_bucket(seq_len: int) -> int:
    return next((b for b in BUCKETS if seq_len <= b), BUCKETS[-1])


def model_key(model) -> str:
    """The model as far as routing outcomes depend on it: type, size and how many layers run full
    attention (the layers a mechanism changes). Stable across machines, unlike a checkpoint path."""
    cfg = text_config(model.config)
    routed = sum(spec.sliding_window is None for spec in layer_specs(cfg))
    return f"{cfg.model_type}-{cfg.num_hidden_layers}x{cfg.hidden_size}-{routed}full"


@dataclass
class AttentionRouter:
    """Harness contract (same as every attention mechanism):
    `attach(model, context_text=None, seq_len=None, kind=None)` classifies `context_text` (its
    request kind too, unless `kind` declares it), chooses, and attaches the chosen mechanism (the
    model's device is the resource context); `observe(cost, quality_loss=None, metric="perplexity")`
    records the measurement of that choice (persisted when `history_path` is set); `explain()` says
    why it chose; `detach(model)` restores the previous attention.
    `force` pins the choice to one candidate (used by the quality-gate canary tests). `seed`: ties
    (and, with `explore_order="random"`, the exploration order) follow a seeded random ranking of the
    candidates instead of their index.
    """

    name: ClassVar[str] = "attn_router"
    candidates: tuple[str, ...] | list[str] = DEFAULT_CANDIDATES
    candidate_params: dict = field(default_factory=dict)
    quality_budget: float = 0.02  # relative perplexity loss
    accuracy_budget: float = 2.0  # points of accuracy / exact match
    min_observations: int = 5  # before a proof counts (the interval must also fit the budget)
    proven_only: bool = False  # every request kind (not only retrieval) needs proof for key-dropping mechanisms
    exploration: float = 0.2
    history_path: str | None = None
    force: str | None = None
    seed: int | None = None
    explore_order: str = "cheapest"

    def __post_init__(self):
        self.candidates = tuple(self.candidates)
        if not self.candidates:
            raise ValueError("attn_router: needs at least one candidate mechanism")
        if self.explore_order not in ("cheapest", "random"):
            raise ValueError(f"attn_router: explore_order must be 'cheapest' or 'random', got {self.explore_order!r}")
        if self.explore_order == "random" and self.seed is None:
            raise ValueError("attn_router: explore_order='random' needs a seed (runs must be repeatable)")
        order = list(self.candidates)
        if self.seed is not None:
            random.Random(self.seed).shuffle(order)
        self._rank = {n: i for i, n in enumerate(order)}  # tie-break: lower rank wins
        self.mechanisms = {n: make_mechanism(n, **dict(self.candidate_params.get(n, {}))) for n in self.candidates}
        for budget in ("quality_budget", "accuracy_budget"):
            if not getattr(self, budget) >= 0:
                raise ValueError(f"attn_router: {budget} must be >= 0, got {getattr(self, budget)!r}")
        if not (isinstance(self.min_observations, int) and self.min_observations >= 1):
            raise ValueError(f"attn_router: min_observations must be an integer >= 1, got {self.min_observations!r}")
        if self.force is not None and self.force not in self.mechanisms:
            raise ValueError(f"attn_router: force={self.force!r} is not one of the candidates {list(self.candidates)}")
        self.history: list[dict] = []
        if self.history_path and os.path.exists(self.history_path):
            with open(self.history_path, encoding="utf-8") as f:
                self.history = json.load(f)["records"]
        self.last: dict | None = None
        self.current = None

    # --- deciding ---------------------------------------------------------------------------
    def context(self, context_text: str | None, seq_len: int | None, device: str = "cpu",
                model: str | None = None, kind: str | None = None) -> dict:
        content = classify(context_text).label if context_text and context_text.strip() else "unknown"
        if seq_len is None:
            seq_len = max(1, len(context_text or "") // 4)  # ~4 chars per token when only text is known
        rk = request_kind(context_text, kind)
        return {"content": content, "bucket": length_bucket(seq_len), "device": device, "seq_len": seq_len,
                "model": model, "kind": rk.kind, "kind_rule": rk.rule}

    def _stats(self, ctx: dict) -> dict[str, dict]:
        """Per mechanism: costs on this device, and quality losses per metric for this request kind
        (records from before request kinds and metrics were kept count as continuation / perplexity)."""
        stats = {n: {"costs": [], "losses": {}} for n in self.candidates}
        for r in self.history:
            same = (r["content"], r["bucket"], r.get("model")) == (ctx["content"], ctx["bucket"], ctx["model"])
            if r["mechanism"] not in stats or not same:
                continue
            if r.get("quality_loss") is not None and r.get("kind", "continuation") == ctx["kind"]:
                stats[r["mechanism"]]["losses"].setdefault(r.get("metric", "perplexity"), []).append(r["quality_loss"])
            if r["device"] == ctx["device"] and r.get("cost") is not None:
                stats[r["mechanism"]]["costs"].append(r["cost"])
        return stats

    def budget(self, metric: str) -> float:
        return self.accuracy_budget if is_accuracy(metric) else self.quality_budget

    def evidence(self, mechanism: str, ctx: dict, stats: dict | None = None) -> list[Evidence]:
        """What history says about `mechanism`'s quality in context `ctx` (as `context()` makes), per metric."""
        losses = (stats or self._stats(ctx))[mechanism]["losses"]
        return [evidence(m, v, self.budget(m), self.min_observations) for m, v in sorted(losses.items())]

    def _guard(self, name: str, evidences: list[Evidence], drops_keys: bool, kind: str) -> str:
        """Status of a feasible mechanism: "allowed" or why not (rules 2 and 3 of the module docstring)."""
        if name == "attn_full":
            return "allowed"
        failing = [e for e in evidences if e.verdict == "fails"]
        if failing:
            e = failing[0]
            if is_accuracy(e.metric):
                return f"excluded: {e.metric} loss {e.mean:.1f} pts > budget {e.budget:g} pts (n={e.n})"
            return f"excluded: quality loss {e.mean:.2%} > budget {e.budget:.2%} ({e.metric}, n={e.n})"
        if drops_keys and (self.proven_only or kind == "retrieval"):
            task_level = [e for e in evidences if is_accuracy(e.metric) or kind != "retrieval"]
            unproven = [e for e in evidences if e.verdict != "proven"]
            if not task_level:
                return f"unproven for {kind} requests: drops distant keys, no task-level quality measured"
            if unproven:
                return f"unproven for {kind} requests: drops distant keys, {unproven[0].metric} not within budget at n={unproven[0].n}"
        return "allowed"

    def choose(self, context_text: str | None = None, seq_len: int | None = None, device: str = "cpu",
               model: str | None = None, kind: str | None = None) -> str:
        ctx = self.context(context_text, seq_len, device, model, kind)
        stats = self._stats(ctx)
        rows, allowed = {}, []
        for n, mech in self.mechanisms.items():
            s = stats[n]
            evidences = self.evidence(n, ctx, stats)
            relative = [v for m, vs in s["losses"].items() if not is_accuracy(m) for v in vs]
            row = {"n": len(s["costs"]), "mean_cost": _mean(s["costs"]), "mean_loss": _mean(relative),
                   "density": mech.density(ctx["seq_len"], 4), "evidence": evidences}
            if mech.window is not None and mech.window > ctx["seq_len"]:
                row["status"] = f"infeasible: window {mech.window} > {ctx['seq_len']} tokens"
            else:
                row["status"] = self._guard(n, evidences, row["density"] < 1.0, ctx["kind"])
                if row["status"] == "allowed":
                    allowed.append(n)
            rows[n] = row
        if not allowed:  # only when full attention itself is not a candidate
            allowed = [min(rows, key=lambda n: rows[n]["mean_loss"] or 0.0)]
        if self.force is not None:
            choice, reason = self.force, "forced by configuration"
        else:
            untried = [n for n in allowed if rows[n]["n"] == 0]
            if len(allowed) == 1:
                choice, reason = allowed[0], "the only allowed mechanism"
            elif untried and self.explore_order == "random":
                choice = min(untried, key=self._rank.get)
                reason = f"exploring: no cost measured yet in this context; seeded random order (seed {self.seed})"
            elif untried:
                choice = min(untried, key=lambda n: (rows[n]["density"], self._rank[n]))
                reason = f"exploring: no cost measured yet in this context; lowest density ({rows[choice]['density']:.2f}) first"
            else:
                total = sum(rows[n]["n"] for n in allowed)
                scale = _mean([rows[n]["mean_cost"] for n in allowed])
                for n in allowed:
                    rows[n]["score"] = rows[n]["mean_cost"] - self.exploration * scale * math.sqrt(math.log(total) / rows[n]["n"])
                choice = min(allowed, key=lambda n: (rows[n]["score"], self._rank[n]))
                reason = f"lowest cost lower-confidence bound among {len(allowed)} allowed"
        self.last = {"context": ctx, "choice": choice, "reason": reason, "table": rows}
        return choice

    def explain(self) -> str:
        """Why the last choice was made: context, rule that decided, and the per-mechanism table."""
        if self.last is None:
            return "attn_router: no choice made yet"
        c = self.last["context"]
        lines = [
            f"attn_router chose {self.last['choice']} for content={c['content']} length={c['seq_len']} "
            f"(bucket <= {c['bucket']}) kind={c['kind']} ({c['kind_rule']}) device={c['device']} "
            f"model={c.get('model')}: {self.last['reason']}"
        ]
        for n, r in self.last["table"].items():
            cost = "-" if r["mean_cost"] is None else f"{r['mean_cost']:.4g}"
            loss = "-" if r["mean_loss"] is None else f"{r['mean_loss']:+.2%}"
            score = f" lcb={r['score']:.4g}" if "score" in r else ""
            lines.append(f"  {n:16s} n={r['n']:<3d} cost={cost:8s} loss={loss:8s} density={r['density']:.2f}{score}  {r['status']}")
            lines += [f"  {'':16s}   {e.describe()}: {e.verdict}" for e in r["evidence"]]
        return "\n".join(lines)

    # --- harness hooks ----------------------------------------------------------------------
    def attach(self, model, context_text: str | None = None, seq_len: int | None = None, kind: str | None = None) -> None:
        device = next(model.parameters()).device.type
        choice = self.choose(context_text, seq_len, device, model_key(model), kind)
        self.current = self.mechanisms[choice]
        self.current.attach(model, seq_len=seq_len)

    def detach(self, model) -> None:
        if self.current is not None:
            self.current.detach(model)
            self.current = None

    def observe(self, cost: float | None, quality_loss: float | None = None, mechanism: str | None = None,
                context: dict | None = None, metric: str = "perplexity", source: str | None = None) -> None:
        """Record one measurement (of the last choice unless `mechanism`/`context` are given).
        `quality_loss` is in `metric`'s unit: relative for perplexities, points for acc/exact_match
        (one request: +100 lost, 0 same, -100 gained). `source` says which request it came from (a
        harness that must not learn from its evaluation documents can check)."""
        if (mechanism is None or context is None) and self.last is None:
            raise ValueError("attn_router: observe() before any choice needs mechanism= and context=")
        mechanism = mechanism or self.last["choice"]
        context = context or self.last["context"]
        if mechanism not in self.mechanisms:
            raise ValueError(f"attn_router: unknown mechanism {mechanism!r}; candidates are {list(self.candidates)}")
        self.history.append({**{k: context.get(k) for k in ("content", "bucket", "device", "seq_len", "model")},
                             "kind": context.get("kind", "continuation"), "mechanism": mechanism, "cost": cost,
                             "quality_loss": quality_loss, "metric": metric, "source": source})
        if self.history_path:
            self.save(self.history_path)

    def save(self, path: str) -> None:
        """Atomic write: a crash never leaves half a history behind."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"version": 1, "records": self.history}, f, indent=1)
        os.replace(tmp, path)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def regret_over_runs(
    router: AttentionRouter,
    workload: list[dict],
    measure: Callable[[str, dict], tuple[float, float | None]],
    runs: int = 5,
    device: str = "cpu",
) -> dict:
    """C16: run a fixed workload `runs` times through the router, feeding back `measure(mechanism,
    request) -> (cost, quality_loss)`; compare each run's cost with the best single candidate in
    hindsight that meets the quality budget on every request (full attention if none does).
    `request` is a dict with `text` and `seq_len`. Every mechanism is measured on every request
    (once, for those the router never picked) to know the hindsight optimum."""
    table: dict[tuple[str, int], list[tuple[float, float | None]]] = {}
    per_run = []
    for run in range(runs):
        cost = violations = 0.0
        picks = []
        for i, req in enumerate(workload):
            choice = router.choose(req.get("text"), req["seq_len"], device)
            c, q = measure(choice, req)
            table.setdefault((choice, i), []).append((c, q))
            router.observe(c, q)
            cost += c
            violations += q is not None and q > router.quality_budget
            picks.append(choice)
        per_run.append({"run": run, "cost": cost, "violations": int(violations), "picks": picks})
    totals = {}
    for name in router.candidates:
        cost, ok = 0.0, True
        for i, req in enumerate(workload):
            if (name, i) not in table:
                table[(name, i)] = [measure(name, req)]
            cs = [c for c, _ in table[(name, i)]]
            qs = [q for _, q in table[(name, i)] if q is not None]
            cost += sum(cs) / len(cs)
            ok &= not qs or sum(qs) / len(qs) <= router.quality_budget
        if ok or name == "attn_full":
            totals[name] = cost
    best = min(totals, key=totals.get)
    for row in per_run:
        row["best_fixed_cost"] = totals[best]
        row["regret"] = row["cost"] - totals[best]
    return {"best_fixed": best, "best_fixed_cost": totals[best], "full_cost": totals.get("attn_full"), "runs": per_run}


__all__ = ["AttentionRouter", "BUCKETS", "length_bucket", "regret_over_runs"]
