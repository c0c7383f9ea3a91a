"""Offline lm-eval tasks (YAML here, JSONL built on first use into `data/`; see README.md).

`evaluate(lm, tasks, limit=...)` is the one entry point the quality suite needs: it resolves the
task names against this folder only (no built-in lm-eval tasks, no hub), fails with one
`ConfigError` line for an unknown task or a data file with bad rows, and runs
`lm_eval.simple_evaluate`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import ConfigError, DataError

TASK_DIR = Path(__file__).resolve().parent

# Required fields per task family and a check each value must pass; anything else in a row is kept.
_TEXT = (str, lambda v: bool(v.strip()))
SCHEMAS = {
    "ollm_rolling_": {"text": _TEXT},
    "ollm_cloze_": {"context": _TEXT, "target": (str, lambda v: v.startswith(" ") and bool(v.strip()))},
    "ollm_niah_": {
        "input": _TEXT,
        "answer": _TEXT,
        "depth": ((int, float), lambda v: math.isfinite(v) and 0 <= v <= 1),
        "length": (int, lambda v: v > 0),
    },
}


# What a request of a task is, where the task knows better than detecting it from the text
# (optim.request_kind): a needle question asks about text thousands of tokens back.
REQUEST_KINDS = {"ollm_niah_": "retrieval"}


def declared_kind(task: str) -> str | None:
    return next((kind for prefix, kind in REQUEST_KINDS.items() if task.startswith(prefix)), None)


def _schema(task: str) -> dict:
    for prefix, schema in SCHEMAS.items():
        if task.startswith(prefix):
            return schema
    raise ConfigError(f"no row schema for task data {task!r}; known families: {sorted(SCHEMAS)}")


def validate_rows(path: Path, task: str) -> list[dict]:
    """Parsed rows of `path`; a `ConfigError` naming the file, line and field on the first bad one."""
    schema = _schema(task)
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"task data {path} line {n}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ConfigError(f"task data {path} line {n}: expected a JSON object, got {type(row).__name__}")
            for field, (kind, ok) in schema.items():
                value = row.get(field)
                if isinstance(value, bool) or not isinstance(value, kind) or not ok(value):
                    raise ConfigError(f"task data {path} line {n}: field {field!r} is missing or invalid ({value!r:.60})")
            rows.append(row)
    if not rows:
        raise ConfigError(f"task data {path} has no rows")
    return rows


def load_task_data(filename: str):
    """The `test` split of a task's JSONL (built first if absent) as a `datasets.DatasetDict`."""
    import datasets

    from .build import BUILDERS, data_dir, write_task

    path = data_dir() / filename
    task = Path(filename).name.removesuffix(".jsonl")
    if not path.exists():
        if task not in BUILDERS:
            raise ConfigError(f"task data {path} does not exist and no builder makes {task!r}")
        try:
            write_task(task)
        except DataError as exc:
            raise ConfigError(f"cannot build task data for {task!r}: {exc}") from None
    rows = validate_rows(path, task)
    # From the validated rows directly: no `datasets` json-builder cache that could go stale.
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def load_wikitext_data(path: str | None = None):
    """WikiText-2's articles (test.txt -> `test`, valid.txt -> `validation`) as `{"page": text}` rows,
    the field lm-eval's own `wikitext` task scores, from the local folder `path` or
    $OLLM_BENCH_WIKITEXT. Never the hub: this is the offline twin of lm-eval's `wikitext`."""
    import datasets

    from ..data import WIKITEXT_ENV, source_items, wikitext_dir

    folder = wikitext_dir(path)
    if folder is None:
        raise ConfigError(f"task ollm_wikitext2 reads a local WikiText-2: set ${WIKITEXT_ENV} (or --metadata "
                          "wikitext_path=DIR) to a folder with its test.txt and valid.txt; online, lm-eval's own "
                          "`wikitext` task downloads it")
    try:
        splits = {name: [{"page": page} for page in source_items("wikitext", str(folder), split)]
                  for name, split in (("test", "test"), ("validation", "valid"))}
    except DataError as exc:
        raise ConfigError(f"task ollm_wikitext2: {exc}") from None
    return datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()})


def task_manager(include_defaults: bool = False):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASK_DIR), include_defaults=include_defaults)


def task_names() -> list[str]:
    """Our tasks and tags (ollm_rolling, ollm_niah)."""
    return [t for t in task_manager().all_tasks if t.startswith("ollm_")]


def calibration_task(task: str, manager=None) -> dict:
    """lm-eval config of `task`'s calibration variant, `<task>_calibration`: the same prompts,
    metrics and scoring over rows built apart from the test rows (`build.py`: other documents or
    other seeds), for a method that learns before it is judged (the attention router)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    from .build import BUILDERS, CALIBRATION

    manager = manager or task_manager()
    check_tasks([task], manager)
    name = task + CALIBRATION
    if name not in BUILDERS:
        raise ConfigError(f"task {task!r} has no calibration variant; variants exist for {sorted(b for b in BUILDERS if b.endswith(CALIBRATION))}")
    cfg = dict(load_yaml(manager.task_index[task].yaml_path, resolve_func=True))
    cfg.pop("tag", None)
    return cfg | {"task": name, "dataset_kwargs": {"data_files": {"test": f"{name}.jsonl"}}}


def check_tasks(tasks: list, manager=None) -> None:
    known = set((manager or task_manager()).all_tasks)
    unknown = [t for t in tasks if isinstance(t, str) and t not in known]
    if unknown:
        raise ConfigError(f"unknown task(s) {unknown}; offline tasks: {sorted(t for t in known if t.startswith('ollm_'))}")


def evaluate(lm, tasks: list, limit: int | float | None = None, **kwargs) -> dict:
    """`lm_eval.simple_evaluate` over our offline tasks (names, or configs such as `calibration_task`);
    bad names or bad rows raise `ConfigError`."""
    import lm_eval

    if isinstance(tasks, str):
        tasks = [tasks]
    manager = task_manager()
    check_tasks(tasks, manager)
    kwargs.setdefault("log_samples", False)
    return lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit, **kwargs)


__all__ = ["REQUEST_KINDS", "TASK_DIR", "calibration_task", "check_tasks", "declared_kind", "evaluate", "load_task_data",
           "load_wikitext_data", "task_manager", "task_names", "validate_rows"]
