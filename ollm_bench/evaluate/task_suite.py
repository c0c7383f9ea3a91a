"""`suite=quality`: our offline lm-eval tasks for the baseline and each optimization, scored
through the optimized cache (`CacheInLoopLM`), with a paired gate against the baseline.

    python -m ollm_bench tasks [optims=baseline,kv_int8,...] [tasks=...] [limit=20] [calibrate=N] [results_dir=results] [force=false]

Each optim is built from `conf/optim/<name>.yaml`, as in sweeps. The router first learns on
calibration requests of each task (`router_calibration.py`: rows apart from the judged ones), then
is judged with exploration off and proof required for every request kind, routing every request by
its own text and the task's declared request kind (`ollm_bench.tasks.REQUEST_KINDS`). Per-document scores accumulate in
`results/quality/samples.jsonl`: an (optim, task) already there with the same `limit` is skipped,
each finished one is saved at once, and `results/quality/tasks.csv` (one row per optim x task x
metric) is rebuilt from all of them, so losses are paired over the same documents
(`evaluate/paired.py`, shared with `python -m ollm_bench lm-eval compare`):
- accuracy metrics (acc, exact_match): drop in points, 95 % Tango score interval for paired
  proportions; gate passes if its upper end <= 2 points;
- perplexity metrics: relative change exp(mean per-unit log-ratio) - 1, 95 % paired t-interval
  over documents; gate passes if its upper end <= 2 %.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import pandas as pd

from ..errors import ConfigError
from .paired import aggregate, format_loss, paired_loss, per_doc
from .stats import BINARY_CI_METHOD, CI_METHOD

DEFAULT_TASKS = ("ollm_cloze_prose", "ollm_niah_1k", "ollm_rolling_prose", "ollm_rolling_code")


def task_max_length(task: str, max_gen_toks: int = 16) -> int:
    """Context budget: a needle prompt's full length plus the answer; 2048 otherwise."""
    from ..tasks.build import NIAH_LENGTHS

    size = task.rsplit("_", 1)[-1]
    if task.startswith("ollm_niah_") and size in NIAH_LENGTHS:
        return NIAH_LENGTHS[size] + max_gen_toks
    return 2048


def read_samples(path: Path) -> list[dict]:
    """Per-(optim, task) entries of a samples file (`tasks` and the router's calibration share it)."""
    if not path.exists():
        return []
    entries = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        try:
            entry = json.loads(line)
            entry["per_doc"] = {m: {int(d): v for d, v in docs.items()} for m, docs in entry["per_doc"].items()}
            entries.append(entry)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{path}:{i}: corrupt samples line ({exc}); move the file away to start over") from exc
    return entries


def _write_samples(path: Path, entries: list[dict]) -> None:
    tmp = path.with_suffix(".jsonl.tmp")  # replace atomically: a crash mid-write keeps the old file
    with open(tmp, "w") as fh:
        for e in entries:
            fh.write(json.dumps(e) + "\n")
    tmp.replace(path)


def save_entry(path: Path, entry: dict) -> list[dict]:
    """Re-read under an exclusive lock, replace this (optim, task), write back: two `tasks` runs
    sharing a results dir never drop each other's results."""
    import fcntl

    with open(path.with_suffix(".jsonl.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = [e for e in read_samples(path) if (e["optim"], e["task"]) != (entry["optim"], entry["task"])]
        entries.append(entry)
        _write_samples(path, entries)
    return entries


def _table(entries: list[dict], device: str, current: dict[str, str | None] | None = None) -> pd.DataFrame:
    """One row per entry x metric, paired with the baseline's entry of the task. `current` maps an
    optim to its method fingerprint now: an entry measured under other parameters or code is kept
    and marked `stale` (entries from before fingerprints were stored count as stale)."""
    base = {e["task"]: e for e in entries if e["optim"] == "baseline"}
    rows = []
    for e in entries:
        stale = current is not None and (e.get("method_id") is None or e.get("method_id") != current.get(e["optim"]))
        for metric, docs in e["per_doc"].items():
            row = {"optim": e["optim"], "task": e["task"], "metric": metric, "n_docs": len(docs),
                   "value": aggregate(metric, list(docs.values())), "limit": e["limit"],
                   "device": e.get("device", device), "started_at": e.get("started_at", ""),
                   "method_id": e.get("method_id", ""), "stale": stale,
                   "router_choices": json.dumps(e["router_choices"]) if e.get("router_choices") else ""}
            if e["optim"] != "baseline" and e["task"] in base:
                loss = paired_loss(metric, docs, base[e["task"]]["per_doc"][metric])
                row.update(loss=loss.point, loss_ci_low=loss.low, loss_ci_high=loss.high, loss_unit=loss.unit,
                           loss_ci_method=loss.interval, gate=loss.gate())
            rows.append(row)
    return pd.DataFrame(rows)


def run_tasks(optims: list[str], tasks: list[str], limit: int, results_dir: Path, force: bool = False,
              calibrate: int | None = None, rebuild: bool = False) -> pd.DataFrame:
    """Run each (optim, task) not already stored with the same `limit` (or all, with `force`),
    saving after each, then rebuild `tasks.csv` from every stored result. A router (an optim with
    `observe`) first learns on `calibrate` (default `limit`) calibration requests per task
    (`router_calibration.py`); its stored results count as done only for the history it has now.
    `rebuild`: run nothing, only rebuild the table (stale marks against today's methods)."""
    import functools
    import os

    import torch
    from tqdm import tqdm

    # Everything is local; never let `datasets`/`huggingface_hub` reach for a hub.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from .lm_eval_model import CacheInLoopLM
    from ..methods import build_scoring_method, method_fingerprint
    from ..run.environment import device_name
    from ..models import load_pretrained
    from ..tasks import check_tasks, declared_kind, evaluate, task_manager
    from .router_calibration import calibrate_router

    if "baseline" not in optims:
        optims = ["baseline", *optims]
    methods = {name: build_scoring_method(name) for name in optims}
    check_tasks(tasks, task_manager())
    out_dir = Path(results_dir) / "quality"
    out_dir.mkdir(parents=True, exist_ok=True)

    @functools.cache
    def get_lm():
        torch.set_flush_denormal(True)
        return load_pretrained("gemma3_270m")

    learned = {} if rebuild else {
        name: calibrate_router(m, tasks, calibrate or limit, limit, get_lm, results_dir, force)
        for name, m in methods.items() if hasattr(m, "observe")}
    samples_path = out_dir / "samples.jsonl"
    entries = read_samples(samples_path)
    current = {name: method_fingerprint(name) for name in {*optims, *(e["optim"] for e in entries)}}
    # Done: same limit, same parameters and code (a re-tuned or edited method runs again), and for
    # a router the same learned history.
    done = {(e["optim"], e["task"]) for e in entries
            if e["limit"] == limit and e.get("method_id") == current[e["optim"]]
            and e.get("router_history") == learned.get(e["optim"])}
    todo = [] if rebuild else [(o, t) for o in optims for t in tasks if force or (o, t) not in done]
    device = device_name(torch.device("cpu"))
    for optim, task in tqdm(todo, desc="suite=quality", unit="task"):
        lm = get_lm()
        method = methods[optim]
        # Every request routed by its own text (and the task's declared request kind), as a server
        # would (CacheInLoopLM.for_method).
        model = CacheInLoopLM.for_method(lm.model, lm.tokenizer, method, max_length=task_max_length(task),
                                         request_kind=declared_kind(task))
        try:
            result = evaluate(model, [task], limit=limit, log_samples=True)
        finally:
            model.detach()
        entry = {"optim": optim, "task": task, "limit": limit, "device": device, "method_id": current[optim],
                 "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                 "router_choices": dict(model.router_choices), "per_doc": per_doc(result["samples"][task])}
        if optim in learned:  # what it had learned when judged, and why it chose as it did last
            entry |= {"router_history": learned[optim], "router_explain": method.explain()}
        entries = save_entry(samples_path, entry)
        print(f"[ollm_bench] {optim} / {task} done", flush=True)
    table = _table(entries, device, current)
    table.to_csv(out_dir / "tasks.csv", index=False)
    return table


HEADLINE = ("acc", "exact_match", "word_perplexity")  # one metric per task in the summary table


def quality_markdown(table: pd.DataFrame) -> str:
    """Headline metric per optim x task: value, loss vs baseline with its 95 % CI, gate verdict."""
    if table.empty:
        return "No suite=quality results yet."
    t = table[table.metric.isin(HEADLINE)].copy()
    order = {name: i for i, name in enumerate(dict.fromkeys(["baseline", *t.optim]))}
    t = t.sort_values(["optim", "task"], key=lambda c: c.map(order) if c.name == "optim" else c)
    lines = ["| optim | task | metric | n | value | loss vs baseline [95% CI] | gate | router picks |",
             "|---|---|---|---|---|---|---|---|"]
    for r in t.itertuples():
        loss = ""
        if isinstance(r.loss, float) and not math.isnan(r.loss):
            loss = format_loss(r.loss, r.loss_ci_low, r.loss_ci_high, r.loss_unit)
        gate = r.gate if isinstance(r.gate, str) else ""
        if bool(getattr(r, "stale", False)):
            gate = f"{gate} (stale)".strip()
        picks = r.router_choices if isinstance(r.router_choices, str) else ""
        lines.append(f"| {r.optim} | {r.task} | {r.metric} | {r.n_docs} | {r.value:.3f} | {loss} | {gate} | {picks} |")
    if "stale" in t and t.stale.eq(True).any():
        lines += ["", "(stale): measured under other parameters or code than the method's YAML and module now "
                  "(or before results recorded them); `python -m ollm_bench tasks optims=NAME` measures it again."]
    lines += ["", f"Intervals: accuracy, {BINARY_CI_METHOD}; perplexity, {CI_METHOD} (`ollm_bench/evaluate/paired.py`)."]
    return "\n".join(lines)
