"""`python -m ollm_bench lm-eval ...`: lm-eval's own command line with `ollm_cache` registered and
our task folder on its include path, and `compare` for two of its runs (logged samples).

    python -m ollm_bench lm-eval run --model ollm_cache --model_args model=gemma3_270m,optim=kv_int8 \\
        --tasks ollm_cloze_prose --limit 20 --output_path out/kv_int8 --log_samples
    python -m ollm_bench lm-eval compare out/baseline out/kv_int8
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..errors import ConfigError
from .paired import aggregate, format_loss, paired_loss, per_doc


def run(argv: list[str]) -> None:
    """The steps of lm-eval's `cli_evaluate`, so every argument reaches lm-eval's parser unchanged;
    only the parsed include path gains `ollm_bench/tasks` (so `ollm_*` tasks need no flag)."""
    import sys

    import torch
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    from .lm_eval_model import CacheInLoopLM  # importing it registers ollm_cache

    # Elementwise ops run ~100x slower on this CPU unless denormals flush to zero (as `tasks` does).
    torch.set_flush_denormal(True)
    sys.argv = ["lm-eval", *argv]
    setup_logging()
    parser = HarnessCLI()
    args = parser.parse_args()
    if getattr(args, "model", None) == "ollm_cache":  # a typo fails now, not after lm-eval indexes its tasks
        CacheInLoopLM.check_model_args(args.model_args)
    if hasattr(args, "include_path"):  # run, ls and validate take one
        args.include_path = include_paths(args.include_path, getattr(args, "config", None))
    parser.execute(args)


def include_paths(given: str | None, config_file: str | None = None) -> list[str]:
    """The user's include path (from the flag, else from `--config`'s YAML), then ours if absent."""
    from ..tasks import TASK_DIR

    if not given and config_file:
        from lm_eval.config.evaluate_config import EvaluatorConfig

        given = EvaluatorConfig.load_yaml_config(config_file).get("include_path")
    paths = [str(p) for p in ([] if not given else given if isinstance(given, list) else [given])]
    if not any(Path(p).resolve() == TASK_DIR for p in paths):
        paths.append(str(TASK_DIR))
    return paths


def load_run(path: str | Path) -> tuple[dict, dict[str, list[dict]]]:
    """(results, task -> logged samples) of one lm-eval run: `path` is its `results_*.json`, or a
    folder holding exactly one (its --output_path, or the model folder lm-eval made in it)."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.rglob("results_*.json"))
        if len(found) != 1:
            listing = "".join(f"\n  {f}" for f in found) or " none"
            raise ConfigError(f"{path}: expected one lm-eval results_*.json, found{listing}; name one file")
        path = found[0]
    if not path.is_file():
        raise ConfigError(f"no lm-eval output at {path}")
    results = json.loads(path.read_text())
    date = path.stem.removeprefix("results_")
    samples = {}
    for task in results.get("configs", {}):
        file = path.parent / f"samples_{task}_{date}.jsonl"
        if not file.exists():
            raise ConfigError(f"{file} is missing: run lm-eval with --log_samples (and --output_path)")
        samples[task] = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    return results, samples


def describe(results: dict) -> str:
    config = results.get("config", {})
    return f"{config.get('model')} ({config.get('model_args')}), limit {config.get('limit')}"


def compare(baseline: tuple[dict, dict], method: tuple[dict, dict]) -> pd.DataFrame:
    """One row per (task, metric) both runs (from `load_run`) logged: values, the method's loss
    with its 95 % interval and the gate verdict (`paired.py`); metrics without a paired rule get a
    `note` instead."""
    (_, base_samples), (_, method_samples) = baseline, method
    tasks = sorted(set(base_samples) & set(method_samples))
    if not tasks:
        raise ConfigError(f"the two runs share no task ({sorted(base_samples)} vs {sorted(method_samples)})")
    rows = []
    for task in tasks:
        base, opt = per_doc(base_samples[task]), per_doc(method_samples[task])
        for metric in sorted(set(base) & set(opt)):
            row = {"task": task, "metric": metric, "baseline": aggregate(metric, list(base[metric].values())),
                   "method": aggregate(metric, list(opt[metric].values()))}
            try:
                loss = paired_loss(metric, opt[metric], base[metric])
            except ConfigError as exc:
                rows.append({**row, "note": str(exc)})
                continue
            rows.append({**row, "n": loss.n, "loss": loss.point, "low": loss.low, "high": loss.high,
                         "unit": loss.unit, "interval": loss.interval, "gate": loss.gate()})
    return pd.DataFrame(rows)


def compare_text(table: pd.DataFrame) -> str:
    lines = []
    for r in table.to_dict("records"):
        head = f"{r['task']} {r['metric']}: baseline {r['baseline']:.6g}, method {r['method']:.6g}"
        if isinstance(r.get("gate"), str):
            loss = format_loss(r["loss"], r["low"], r["high"], r["unit"])
            lines.append(f"{head}; loss {loss} (95 % {r['interval']}, n={r['n']}); gate {r['gate']}")
        else:
            lines.append(f"{head}; no verdict: {r['note']}")
    return "\n".join(lines)
