"""`python -m ollm_bench sweep|report` (claims and gate land with their issue)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

USAGE = """usage: python -m ollm_bench COMMAND [key=value ...]

commands:
  sweep    run the suite's grid (Hydra multirun; default suite=default); rows go to
           results/<suite>/runs.csv, configs already done are skipped.
           e.g.  python -m ollm_bench sweep suite=ci
                 python -m ollm_bench sweep optim=kv_int8 content=prose seq_len=1024
                 python -m ollm_bench sweep hydra/launcher=joblib
                 python -m ollm_bench sweep --cfg job      (print the composed config)
  report   write results/<suite>/report.md and plots from stored rows
           e.g.  python -m ollm_bench report suite=default
"""

def _fail(msg: str, code: int = 2) -> None:
    print(f"ollm_bench: error: {msg}", file=sys.stderr)
    sys.exit(code)


def sweep(args: list[str]) -> None:
    from .progress import FAILED_RUNS
    from .runner import SWEEP_ID_ENV, new_sweep_id

    os.environ.setdefault(SWEEP_ID_ENV, new_sweep_id())
    sys.argv = [f"{sys.argv[0]} sweep", *args]
    from .app import sweep_app

    sweep_app()
    if FAILED_RUNS:
        _fail(f"{len(FAILED_RUNS)} run(s) did not succeed:\n  " + "\n  ".join(FAILED_RUNS), code=1)


def _key_values(args: list[str], allowed: dict[str, str]) -> dict[str, str]:
    out = dict(allowed)
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in allowed:
            _fail(f"unknown argument {arg!r}; expected one of {', '.join(k + '=...' for k in allowed)}")
        out[key] = value
    return out


def report(args: list[str]) -> None:
    from .errors import BenchError
    from .report import write_report

    opts = _key_values(args, {"suite": "default", "results_dir": "results"})
    try:
        path = write_report(Path(opts["results_dir"]) / opts["suite"])
    except BenchError as exc:
        _fail(str(exc))
    print(f"[ollm_bench] wrote {path}")


COMMANDS = {"sweep": sweep, "report": report}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        _fail(f"unknown command {command!r}; choose one of {', '.join(COMMANDS)}\n\n{USAGE}")
    COMMANDS[command](rest)
