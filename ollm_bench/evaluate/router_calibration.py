"""Teach the attention router task-level quality on calibration requests, before it is judged.

`python -m ollm_bench tasks optims=attn_router tasks=... limit=N [calibrate=M]` runs this for a
router before its judged pass:
- requests: the first M rows of each task's calibration variant `<task>_calibration`
  (`ollm_bench/tasks/build.py`: the next rolling documents, later cloze passages, needles with
  another seed in haystacks sharing no text with the test prompts where the essays leave room),
  never the documents the router is judged on (`check_disjoint` stops the run if a text is shared);
- every feasible candidate answers each request through the same `CacheInLoopLM` path as the judged
  run, attn_full first (the reference). Per request and metric the loss against full attention goes
  to `router.observe(None, loss, mechanism=, context=, metric=, source=)`: exact_match / acc in
  points (+100 lost, 0 kept, -100 gained), word_perplexity / perplexity relative (ppl ratio - 1);
- cost: none. This suite runs on a shared 2-core CPU whose seconds rank mechanisms by the machine's
  load (and CPU masked attention is slower than SDPA anyway); without measured cost the router
  ranks allowed mechanisms by attended pairs (density), the work a GPU kernel skips;
- early stop: a mechanism that fails a metric in a context (mean loss beyond budget, e.g. one lost
  needle among a few) is excluded there for good; further requests would only cost CPU time.
Per-request results accumulate in results/quality/calibration.jsonl (resumable: a measured request
is never rerun) and the router's history is rebuilt from them every time, so what it learned is a
pure function of stored measurements; it is saved to results/quality/router_history.json and
summarized in results/quality/router_calibration.md.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Callable

from optim.attention_router import model_key
from optim.attn_hybrid import make_mechanism
from optim.quality_evidence import is_accuracy

from ..errors import ConfigError
from .paired import per_doc
from .task_suite import read_samples, save_entry, task_max_length

FED_METRICS = ("exact_match", "acc", "word_perplexity", "perplexity")  # one headline metric family per task
TEXT_FIELDS = ("input", "context", "text")  # what a row's request is made of, per task family


def request_loss(metric: str, full, mech) -> float:
    """One request's loss of `mech` against `full`: points for accuracy, relative for perplexity."""
    if is_accuracy(metric):
        return 100.0 * (float(full) - float(mech))
    if isinstance(full, list):  # rolling (loglikelihood, words)
        return math.exp((full[0] - mech[0]) / full[1]) - 1
    return math.exp(float(full) - float(mech)) - 1  # one target's loglikelihood (cloze perplexity)


def history_records(entries: list[dict], candidates, n: int) -> list[dict]:
    """What the router learns from stored calibration entries: one record per (mechanism, request,
    metric) measured on both the mechanism and attn_full, for the first `n` requests of each task."""
    by = {(e["optim"], e["task"]): e for e in entries}
    out = []
    for (mech, task), e in sorted(by.items()):
        ref = by.get(("attn_full", task))
        if mech == "attn_full" or mech not in candidates or ref is None:
            continue
        for metric in (m for m in FED_METRICS if m in e["per_doc"]):
            for doc in sorted(d for d in e["per_doc"][metric] if d < n and d in ref["per_doc"].get(metric, {})):
                out.append({"mechanism": mech, "context": e["contexts"][str(doc)], "metric": metric,
                            "loss": request_loss(metric, ref["per_doc"][metric][doc], e["per_doc"][metric][doc]),
                            "source": f"{task}:{doc}"})
    return out


def teach(router, entries: list[dict], n: int) -> str:
    """Replace the router's history by what `entries` measured; returns its digest."""
    path, router.history_path = router.history_path, None
    router.history = []
    for r in history_records(entries, router.candidates, n):
        router.observe(None, r["loss"], mechanism=r["mechanism"], context=r["context"], metric=r["metric"],
                       source=r["source"])
    router.history_path = path
    if path:
        router.save(path)
    return hashlib.sha256(json.dumps(router.history, sort_keys=True).encode()).hexdigest()[:16]


def check_disjoint(task: str, judged: int, n: int) -> dict:
    """The first `n` calibration rows share no request text with the first `judged` test rows."""
    from ..tasks import load_task_data
    from ..tasks.build import CALIBRATION

    test = load_task_data(f"{task}.jsonl")["test"]
    cal = load_task_data(f"{task}{CALIBRATION}.jsonl")["test"]
    field = next(f for f in TEXT_FIELDS if f in test.column_names)
    shared = set(test[field][:judged]) & set(cal[field][:n])
    if shared:
        raise ConfigError(f"{task}: {len(shared)} calibration request(s) equal judged ones; the router would learn from its test")
    overlap = sum(cal["test_overlap_chars"][:n]) if "test_overlap_chars" in cal.column_names else 0
    return {"calibration_rows": min(n, len(cal)), "shared_texts": 0, "haystack_chars_shared_with_test": overlap}


def calibrate_router(router, tasks: list[str], n: int, judged: int, get_lm: Callable, results_dir: Path,
                     force: bool = False) -> str:
    """Measure the router's candidates on `n` calibration requests per task (see the module
    docstring), teach the router, and return the digest of the history it learned."""
    import torch

    from ..run.environment import device_name
    from ..tasks import calibration_task, declared_kind

    device = device_name(torch.device("cpu"))  # CPU numerics differ across machines: pair like with like
    out_dir = Path(results_dir) / "quality"
    out_dir.mkdir(parents=True, exist_ok=True)
    store = out_dir / "calibration.jsonl"
    if force and store.exists():
        store.unlink()
    router.history_path = str(out_dir / "router_history.json")
    entries = read_samples(store)
    summary = {}
    for task in tasks:
        summary[task] = check_disjoint(task, judged, n)
        cfg, kind = calibration_task(task), declared_kind(task)
        name = cfg["task"]
        for doc in range(summary[task]["calibration_rows"]):
            for mech_name in ["attn_full", *(m for m in router.candidates if m != "attn_full")]:
                stored = {(e["optim"], e["task"]): e for e in entries}
                entry = stored.get((mech_name, name)) or {"optim": mech_name, "task": name, "limit": None, "device": device,
                                                          "per_doc": {}, "contexts": {}, "stopped": None}
                if str(doc) in entry["contexts"] or entry["stopped"]:
                    continue
                mech = router.mechanisms.get(mech_name) or make_mechanism(mech_name)
                ref = stored.get(("attn_full", name))
                if mech_name != "attn_full" and mech.window is not None and mech.window > ref["contexts"][str(doc)]["seq_len"]:
                    continue  # infeasible there: the router never picks it for this request
                measured, ctx = _measure(router, mech, cfg, doc, kind, get_lm(), task_max_length(task))
                for metric, docs in measured.items():
                    entry["per_doc"].setdefault(metric, {}).update(docs)
                entry["contexts"][str(doc)] = ctx
                entries = save_entry(store, entry)
                teach(router, entries, n)
                failing = [e for e in router.evidence(mech_name, ctx) if e.verdict == "fails"]
                if mech_name != "attn_full" and failing:
                    entry["stopped"] = f"after request {doc}: {failing[0].describe()}"
                    entries = save_entry(store, entry)
                print(f"[router calibration] {name} request {doc}: {mech_name} measured", flush=True)
    digest = teach(router, entries, n)
    (out_dir / "router_calibration.md").write_text(calibration_markdown(router, entries, summary, n))
    return digest


def _measure(router, mech, cfg: dict, doc: int, kind: str | None, lm, max_length: int) -> tuple[dict, dict]:
    """One calibration request answered with `mech` attached: (per-doc metrics, the router's context
    of the request; of its longest window, for a rolling document scored in several)."""
    from ..methods import make_cache_fn
    from ..tasks import evaluate
    from .lm_eval_model import CacheInLoopLM

    contexts = []

    def route(model, context_text=None, seq_len=None):
        contexts.append(router.context(context_text, seq_len, device="cpu", model=model_key(model), kind=kind))
        mech.attach(model)

    make_cache = lambda config: make_cache_fn(mech, config)()  # noqa: E731
    model = CacheInLoopLM(lm.model, lm.tokenizer, make_cache, route=route, max_length=max_length)
    try:
        result = evaluate(model, [cfg], samples={cfg["task"]: [doc]}, log_samples=True)
    finally:
        mech.detach(lm.model)
    return per_doc(result["samples"][cfg["task"]]), max(contexts, key=lambda c: c["seq_len"])


def calibration_markdown(router, entries: list[dict], summary: dict, n: int) -> str:
    """Per task and mechanism: requests measured, mean loss per metric, verdict, why it stopped."""
    lines = ["# What attn_router learned before it was judged", "",
             f"Calibration requests per task: up to {n}, from `<task>_calibration` (ollm_bench/evaluate/router_calibration.py); "
             "loss vs attn_full on the same request.", "",
             "| task | calibration rows | texts shared with judged rows | haystack chars shared |", "|---|---|---|---|"]
    lines += [f"| {t} | {s['calibration_rows']} | {s['shared_texts']} | {s['haystack_chars_shared_with_test']} |" for t, s in summary.items()]
    lines += ["", "| calibration task | mechanism | context | evidence | stopped |", "|---|---|---|---|---|"]
    for e in sorted(entries, key=lambda e: (e["task"], e["optim"])):
        if e["optim"] == "attn_full" or not e["contexts"]:
            continue
        seen = set()
        for ctx in e["contexts"].values():
            key = (ctx["kind"], ctx["content"], ctx["bucket"])
            if key in seen:
                continue
            seen.add(key)
            ev = "; ".join(f"{x.describe()}: {x.verdict}" for x in router.evidence(e["optim"], ctx)) or "-"
            lines.append(f"| {e['task']} | {e['optim']} | {ctx['kind']}, {ctx['content']}, <= {ctx['bucket']} tokens "
                         f"| {ev} | {e.get('stopped') or ''} |")
    return "\n".join(lines) + "\n"


__all__ = ["calibrate_router", "check_disjoint", "history_records", "request_loss", "teach"]
