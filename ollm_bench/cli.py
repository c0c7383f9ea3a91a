"""`python -m ollm_bench sweep|report` (claims and gate land with their issue)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

USAGE = """usage: python -m ollm_bench COMMAND [key=value ...]

commands:
  sweep    run the suite's grid (Hydra multirun; default suite=default); rows go to
           results/<suite>/runs.csv, configs already done are skipped. Launchers
           (joblib, ray, submitit_slurm): README "Scaling out".
           e.g.  python -m ollm_bench sweep suite=ci
                 python -m ollm_bench sweep optim=kv_int8 content=prose seq_len=1024
                 python -m ollm_bench sweep hydra/launcher=joblib
                 python -m ollm_bench sweep hydra/launcher=ray hydra.launcher.address=HEAD:6379
                 python -m ollm_bench sweep hydra/launcher=submitit_slurm hydra.launcher.partition=gpu
                 python -m ollm_bench sweep --cfg job      (print the composed config)
  report   write results/<suite>/report.md and plots from stored rows
           e.g.  python -m ollm_bench report suite=default
  gate     run a suite (default ci) into a fresh directory and compare it with the
           committed reference rows; exit 1 listing each regression (quality, KV bytes, failures)
           e.g.  python -m ollm_bench gate reference=results/reference suite=ci
  tasks    suite=quality: offline lm-eval tasks (cloze, needle-in-a-haystack, rolling ppl)
           through each optimization's cache; results/quality/tasks.csv with the paired gate
           e.g.  python -m ollm_bench tasks optims=kv_int8,kv_mixed limit=20
           a router (attn_router) first learns on calibrate=N (default limit) calibration requests
           per task, never the judged ones (results/quality/router_calibration.md); rebuild=true
           runs nothing and rebuilds the table, marking scores of since-changed methods (stale)
  calibrate choose a method's parameters on the calibration split (WikiText-2 valid.txt) from
           the candidates in conf/calibrate/NAME.yaml; writes them into conf/optim/NAME.yaml and
           the evidence into results/calibration/NAME.md
           e.g.  python -m ollm_bench calibrate optim=kv_adaptive
  lm-eval  lm-eval's own command line with our model `ollm_cache` registered and ollm_bench/tasks
           added to --include_path (ollm_* tasks need no flag); every other argument goes to
           lm-eval unchanged. `compare` pairs two runs' logged samples (loss, 95 % interval, gate)
           e.g.  python -m ollm_bench lm-eval run --model ollm_cache --tasks ollm_cloze_prose --limit 20
                     --model_args model=gemma3_270m,optim=kv_int8 --output_path out/kv_int8 --log_samples
                 python -m ollm_bench lm-eval compare out/baseline out/kv_int8
  claims   compute a verdict for each claim of the report from stored rows; writes
           results/claims.md and the README's claims table
"""

def _fail(msg: str, code: int = 2) -> None:
    print(f"ollm_bench: error: {msg}", file=sys.stderr)
    sys.exit(code)


def sweep(args: list[str]) -> None:
    import shlex

    from .errors import BenchError
    from .run.environment import COMMAND_ENV
    from .run.progress import FAILED_RUNS
    from .run.runner import SWEEP_ID_ENV, new_sweep_id
    from .run.validate import rewrite_model_paths, validate_sweep

    os.environ.setdefault(SWEEP_ID_ENV, new_sweep_id())
    os.environ.setdefault(COMMAND_ENV, shlex.join(["python", "-m", "ollm_bench", "sweep", *args]))
    args = rewrite_model_paths(args)
    if not any(a.startswith("--") for a in args):  # --cfg, --help, ... : Hydra's own modes
        try:
            validate_sweep(args)
        except BenchError as exc:
            _fail(str(exc))
    sys.argv = [f"{sys.argv[0]} sweep", *args]
    from .app import sweep_app

    try:
        sweep_app()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    if not any(a.startswith("--") for a in args):
        _print_sweep_table()
    if FAILED_RUNS:
        _fail(f"{len(FAILED_RUNS)} run(s) did not succeed:\n  " + "\n  ".join(FAILED_RUNS), code=1)


def _print_sweep_table() -> None:
    """End of a sweep: write its suite's report and print the table of this sweep's machine."""
    from .errors import BenchError
    from .report.tables import write_report
    from .run.progress import LAST_SWEEP

    if not LAST_SWEEP:
        return
    suite_dir, devices = LAST_SWEEP["suite_dir"], LAST_SWEEP["devices"]
    try:
        path = write_report(suite_dir)
    except BenchError as exc:
        print(f"[ollm_bench] no report: {exc}")
        return
    from .report.tables import tables_for_devices

    print(tables_for_devices(suite_dir, devices))
    print(f"[ollm_bench] report: {path}")


def _normalize(args: list[str]) -> list[str]:
    """Accept `--key value` and `--key=value` as well as `key=value`."""
    out, rest = [], iter(args)
    for arg in rest:
        if arg.startswith("--") and len(arg) > 2:
            key = arg[2:]
            out.append(key if "=" in key else f"{key}={next(rest, '')}")
        else:
            out.append(arg)
    return out


def _key_values(args: list[str], allowed: dict[str, str]) -> dict[str, str]:
    out = dict(allowed)
    for arg in _normalize(args):
        key, sep, value = arg.partition("=")
        if not sep or key not in allowed:
            _fail(f"unknown argument {arg!r}; expected one of {', '.join(k + '=...' for k in allowed)}")
        out[key] = value
    return out


def report(args: list[str]) -> None:
    from .errors import BenchError
    from .report.tables import write_report

    opts = _key_values(args, {"suite": "default", "results_dir": "results"})
    try:
        path = write_report(Path(opts["results_dir"]) / opts["suite"])
    except BenchError as exc:
        _fail(str(exc))
    print(f"[ollm_bench] wrote {path}")


def gate(args: list[str]) -> None:
    import subprocess
    import tempfile

    from .errors import BenchError
    from .report.gate import CROSS_KV_TOL, run_gate

    known = {"reference": "results/reference", "suite": "ci", "results_dir": "", "run": "true",
             "kv_tol": "0.001", "ppl_tol": "0.005"}
    args = _normalize(args)
    # Anything that is not a gate option is a Hydra override for the gate's sweep.
    overrides = [a for a in args if a.partition("=")[0] not in known]
    opts = _key_values([a for a in args if a.partition("=")[0] in known], known)
    # Rows live under the suite's `suite_name` (the suite's own name unless overridden).
    name = next((a.partition("=")[2] for a in reversed(overrides) if a.startswith("suite_name=")), opts["suite"])
    reference = Path(opts["reference"]) / name
    if not (reference / "runs.csv").exists():
        _fail(f"no reference rows at {reference / 'runs.csv'}")
    # A fresh directory by default: a stale run (same config hash, older code) must not be reused.
    results_dir = opts["results_dir"] or tempfile.mkdtemp(prefix="ollm_gate_")
    current = Path(results_dir) / name
    if opts["run"] == "true":
        proc = subprocess.run([sys.executable, "-m", "ollm_bench", "sweep", f"suite={opts['suite']}",
                               f"results_dir={results_dir}", *overrides])
        if proc.returncode == 2:
            _fail("the gate's sweep failed on bad input (see above)")
    try:
        result = run_gate(current, reference, float(opts["kv_tol"]), float(opts["ppl_tol"]))
    except BenchError as exc:
        _fail(str(exc))
    if result.cross_device:
        print(f"[ollm_bench] gate: {len(result.cross_device)} run(s) compared with another CPU model's reference row "
              f"(interval rule and bytes within {100 * CROSS_KV_TOL:g} % only; per-document rule skipped). Add this CPU's rows to the "
              "reference for the full gate:\n  " + "\n  ".join(result.cross_device))
    if result.passed:
        print(f"[ollm_bench] gate passed: {result.checked} runs match {reference} within tolerance")
        return
    _fail(f"gate failed, {len(result.regressions)} regression(s) vs {reference}:\n  "
          + "\n  ".join(result.regressions), 1)


def claims(args: list[str]) -> None:
    from .errors import BenchError
    from .report.claims import claims_markdown, evaluate, load_claims, rules_markdown

    opts = _key_values(args, {"claims": "conf/claims/ollm_enhanced.yaml", "results_dir": "results",
                              "readme": "README.md"})
    try:
        claim_list = load_claims(Path(opts["claims"]))
        table = evaluate(claim_list, Path(opts["results_dir"]))
    except BenchError as exc:
        _fail(str(exc))
    body = claims_markdown(table)
    out = Path(opts["results_dir"]) / "claims.md"
    out.write_text("# Claims of the oLLM Enhanced report: computed verdicts\n\n"
                   "Generated by `python -m ollm_bench claims` from the rows under results/ (rules: "
                   "ollm_bench/report/claims/, claim list: " + opts["claims"] + "). One row per claim and scope: "
                   "quality-based claims are judged per model. Verdicts: reproduced, not reproduced, inconclusive, "
                   "or no data (then no number is shown).\n\n" + body + "\n\n## Rules\n\n" + rules_markdown(claim_list)
                   + "\n")
    replace_readme_block(Path(opts["readme"]), "claims", body)
    print(body)
    print(f"[ollm_bench] wrote {out}")


def replace_readme_block(readme: Path, name: str, body: str) -> None:
    """Put `body` between `<!-- name:start -->` and `<!-- name:end -->` (README sections we generate)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if readme.exists() and start in readme.read_text() and end in readme.read_text():
        text = readme.read_text()
        readme.write_text(text[: text.index(start) + len(start)] + "\n" + body + "\n" + text[text.index(end):])


def tasks_readme(readme: str, results_dir: str) -> Path | None:
    """The README whose quality table a `tasks` run updates: the one asked for, else README.md for
    the project's own `results/` folder only, so a side experiment never overwrites that table."""
    if readme:
        return Path(readme)
    return Path("README.md") if Path(results_dir) == Path("results") else None


def tasks(args: list[str]) -> None:
    from .errors import BenchError
    from .evaluate.task_suite import DEFAULT_TASKS, quality_markdown, run_tasks

    opts = _key_values(args, {"optims": "baseline,kv_int8", "tasks": ",".join(DEFAULT_TASKS), "limit": "20",
                              "results_dir": "results", "force": "false", "readme": "", "calibrate": "",
                              "rebuild": "false"})
    try:
        table = run_tasks(opts["optims"].split(","), opts["tasks"].split(","), int(opts["limit"]),
                          Path(opts["results_dir"]), force=opts["force"].lower() in ("1", "true", "yes"),
                          calibrate=int(opts["calibrate"]) if opts["calibrate"] else None,
                          rebuild=opts["rebuild"].lower() in ("1", "true", "yes"))
    except BenchError as exc:
        _fail(str(exc))
    body = quality_markdown(table)
    out = Path(opts["results_dir"]) / "quality" / "report.md"
    out.write_text("# suite=quality: offline lm-eval tasks through each optimization\n\n"
                   f"Generated by `python -m ollm_bench tasks` from {out.parent / 'samples.jsonl'}.\n\n" + body + "\n")
    readme = tasks_readme(opts["readme"], opts["results_dir"])
    if readme:
        replace_readme_block(readme, "quality", body)
    print(body)
    print(f"[ollm_bench] wrote {out}")


def calibrate(args: list[str]) -> None:
    from .errors import BenchError
    from .evaluate.calibrate import calibrate as run_calibration

    opts = _key_values(args, {"optim": "", "results_dir": "results", "write": "true", "spec": ""})
    if not opts["optim"]:
        _fail("calibrate needs optim=NAME (a spec in conf/calibrate/NAME.yaml)")
    try:
        print(run_calibration(opts["optim"], Path(opts["results_dir"]), write=opts["write"].lower() == "true",
                              spec_path=Path(opts["spec"]) if opts["spec"] else None))
    except BenchError as exc:
        _fail(str(exc))


LM_EVAL_USAGE = """usage: python -m ollm_bench lm-eval [run|ls|validate] [lm-eval arguments ...]
       python -m ollm_bench lm-eval compare BASELINE_OUTPUT METHOD_OUTPUT

run/ls/validate: lm-eval's own command line (its help follows), with
  --model ollm_cache --model_args model=<gemma3_270m | local dir | hub id>,optim=<conf/optim name>
      [,dtype=float32|bfloat16|float16,max_length=N,prefill_chunk=N,score_chunk=N,max_gen_toks=N]
  registered (every score through the method's cache), and ollm_bench/tasks added to --include_path
  (ollm_* tasks need no flag). Bad model_args (unknown optim, argument or model): exit 2.
compare: two runs made with --output_path and --log_samples (each its --output_path folder or a
  results_*.json), paired by document: per task and metric the loss vs the baseline, its 95 %
  interval (Tango score for 0/1 metrics, paired t for perplexities) and the gate verdict;
  exit 1 when a gate fails.
"""


def lm_eval(args: list[str]) -> None:
    from .errors import BenchError

    if args[:1] == ["compare"]:
        _lm_eval_compare(args[1:])
        return
    if not args or any(a in ("-h", "--help") for a in args):
        print(LM_EVAL_USAGE)
    from .evaluate.lm_eval_cli import run

    try:
        run(args)
    except BenchError as exc:
        _fail(str(exc))


def _lm_eval_compare(args: list[str]) -> None:
    from .errors import BenchError
    from .evaluate.lm_eval_cli import compare, compare_text, describe, load_run

    if any(a in ("-h", "--help") for a in args):
        print(LM_EVAL_USAGE)
        return
    if len(args) != 2:
        _fail(f"compare takes two lm-eval outputs, BASELINE and METHOD (got {len(args)} arguments)")
    try:
        base, method = load_run(args[0]), load_run(args[1])
        table = compare(base, method)
    except BenchError as exc:
        _fail(str(exc))
    print(f"baseline: {describe(base[0])}\nmethod:   {describe(method[0])}\n{compare_text(table)}")
    failed = table[table["gate"] == "fail"] if "gate" in table else table.iloc[0:0]
    if len(failed):
        _fail(f"gate failed: {', '.join(failed.task + ' ' + failed.metric)}", 1)


COMMANDS = {"sweep": sweep, "report": report, "gate": gate, "claims": claims, "tasks": tasks, "calibrate": calibrate,
            "lm-eval": lm_eval}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        _fail(f"unknown command {command!r}; choose one of {', '.join(COMMANDS)}\n\n{USAGE}")
    COMMANDS[command](rest)
