"""`python -m ollm_bench calibrate optim=NAME`: choose a method's parameters from quality measured on
the calibration split (WikiText-2 valid.txt), never on evaluated documents.

A spec in `conf/calibrate/<optim>.yaml` lists candidate parameter sets, the rule and the cells:

    optim: kv_adaptive
    models: [gemma3_270m, smollm2_135m]
    seq_len: 2048
    n_docs: 12
    budget: 0.01                # upper end of the paired interval of Δppl on the calibration split
    overrides: []               # more sweep overrides, e.g. scenario.score_tokens=256
    params: {}                  # method parameters fixed for every run of it (not chosen)
    sensitivity: {n_docs: 4}    # per-layer methods only: rank layers first (layer_sensitivity.py)
    candidates:                 # cheapest first is not required: bytes are measured
      - {max_error: 0.05}
      - {max_error: 0.1}

Each candidate (and the baseline) runs as a sweep of the `calibration` suite on `content=wikitext
content.split=valid` (rows in `results/calibration/runs.csv`, resumable like any sweep). The chosen
candidate is the one with the fewest KV bytes whose interval's upper end is within `budget` on every
model; if none is, the most accurate one, and the report says so. The choice is written into
`conf/optim/<optim>.yaml` (the parameter lines and `calibration:`), and the evidence into
`results/calibration/<optim>.md`, so every later row of the method records the calibration it used.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from ..config import CONF_DIR
from ..errors import ConfigError
from ..run.store import ResultStore
from ..report.quality import summarize

SPEC_DIR = Path(CONF_DIR) / "calibrate"


def load_spec(optim: str, path: Path | None = None) -> dict:
    path = Path(path) if path else SPEC_DIR / f"{optim}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in SPEC_DIR.glob("*.yaml"))
        raise ConfigError(f"no calibration spec for optim {optim!r} (conf/calibrate/{optim}.yaml); known: {known}")
    spec = yaml.safe_load(path.read_text())
    for key in ("models", "seq_len", "n_docs", "budget", "candidates"):
        if key not in spec:
            raise ConfigError(f"{path}: missing {key!r}")
    if not spec["candidates"] or not all(isinstance(c, dict) and c for c in spec["candidates"]):
        raise ConfigError(f"{path}: candidates must be a non-empty list of parameter maps")
    return spec


def _overrides(key: str, value) -> list[str]:
    if isinstance(value, dict):
        # Hydra merges a map into the YAML's map (and refuses new keys under struct mode), so a measured
        # map such as a layer ranking replaces the committed one: delete the key, then add it back.
        return [f"~optim.method.{key}", f"+optim.method.{key}={_hydra_value(value)}"]
    return [f"optim.method.{key}={_hydra_value(value)}"]


def _sweep(spec: dict, optim: str, params: dict, results_dir: Path, models=None, n_docs=None, extra=()) -> None:
    if optim == spec["optim"]:  # the spec's fixed parameters hold for every run of the method
        params = {**spec.get("params", {}), **params}
    cmd = [sys.executable, "-m", "ollm_bench", "sweep", "suite=calibration", f"optim={optim}",
           f"model={','.join(models or spec['models'])}", *spec.get("overrides", []), f"seq_len={spec['seq_len']}",
           f"scenario.n_docs={n_docs or spec['n_docs']}", f"results_dir={results_dir}",
           *[o for k, v in params.items() for o in _overrides(k, v)], *extra]
    proc = subprocess.run(cmd)
    if proc.returncode == 2:
        raise ConfigError(f"calibration sweep refused its config: {' '.join(cmd[3:])}")


def _hydra_value(value) -> str:
    """A Hydra override value: JSON, except dict keys unquoted (Hydra's grammar takes identifiers)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_hydra_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def markdown(table: pd.DataFrame) -> str:
    fmt = {"kv_ratio": "{:.3f}", "worst_upper": "{:+.2%}", "worst_point": "{:+.2%}"}
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for _, r in table.iterrows():
        lines.append("| " + " | ".join(fmt[c].format(r[c]) if c in fmt else str(r[c]) for c in table.columns) + " |")
    return "\n".join(lines)


def choose(summary: pd.DataFrame, spec: dict, optim: str, fixed: dict | None = None) -> tuple[dict, pd.DataFrame, bool]:
    """(chosen params, per-candidate table, whether any candidate met the budget on every model).
    `fixed`: parameters every candidate row must also have (e.g. the ranking measured just before)."""
    keys = sorted({k for c in spec["candidates"] for k in c})
    rows = []
    for i, cand in enumerate(spec["candidates"]):
        want = {**(fixed or {}), **cand}
        part = summary[(summary.optim == optim) & (summary.n_docs == spec["n_docs"])
                       & summary.params.map(lambda p, c=want: all(p.get(k) == v for k, v in c.items()))]
        if part.empty or len(part) < len(spec["models"]):
            raise ConfigError(f"candidate {cand} has no calibration rows for every model; re-run the command")
        rows.append({"candidate": i, **{k: cand.get(k) for k in keys}, "kv_ratio": part.kv_ratio.max(),
                     "worst_upper": part.ppl_delta_high.max(), "worst_point": part.ppl_delta.max(),
                     "meets_budget": bool((part.ppl_delta_high <= spec["budget"]).all())})
    table = pd.DataFrame(rows)
    ok = table[table.meets_budget]
    best = (ok.sort_values(["kv_ratio", "worst_upper"]) if len(ok) else table.sort_values("worst_upper")).iloc[0]
    return dict(spec["candidates"][int(best.candidate)]), table, bool(len(ok))


def write_choice(optim: str, params: dict, evidence: str) -> Path:
    """Set the chosen parameter lines (and `calibration:`) in conf/optim/<optim>.yaml, keeping comments."""
    path = Path(CONF_DIR) / "optim" / f"{optim}.yaml"
    text = path.read_text()
    for key, value in params.items():
        line = f"  {key}: {json.dumps(value)}"
        text, n = re.subn(rf"^  {re.escape(key)}:.*$", line, text, flags=re.M)
        if n == 0:
            text = text.rstrip("\n") + "\n" + line + "\n"
    cal = f"calibration: {evidence}"
    text, n = re.subn(r"^calibration:.*$", cal, text, flags=re.M)
    if n == 0:
        text = text.replace("\nmethod:", f"\n{cal}\nmethod:", 1)
    path.write_text(text)
    return path


def calibrate(optim: str, results_dir: Path, write: bool = True, spec_path: Path | None = None) -> str:
    spec = load_spec(optim, spec_path)
    results_dir = Path(results_dir)
    fixed, stage_one = {}, []
    if "sensitivity" in spec:  # a per-layer method: rank its layers first, then choose how many go low
        from .layer_sensitivity import markdown as ranking_markdown
        from .layer_sensitivity import rank_layers

        ranking, per_layer = rank_layers(spec, optim, results_dir,
                                         lambda o, p, m, n, e: _sweep(spec, o, p, results_dir, m, n, e))
        fixed = {"ranking": ranking, "probe_layers": None}
        stage_one = [f"Stage 1, layer sensitivity: each layer alone at the low layout, "
                     f"{spec['sensitivity']['n_docs']} documents per model; ranking {ranking}.", "",
                     ranking_markdown(per_layer), ""]
    for cand in spec["candidates"]:  # first: a candidate the method refuses stops before any baseline work
        _sweep(spec, optim, {**{k: v for k, v in fixed.items() if v is not None}, **cand}, results_dir)
    _sweep(spec, "baseline", {}, results_dir)
    df = ResultStore(results_dir / "calibration" / "runs.csv").read()
    chosen, table, met = choose(summarize(df), spec, optim, fixed)
    rel = f"results/calibration/{optim}.md"
    report = [f"# Calibration of `{optim}`", "",
              f"Command: `python -m ollm_bench calibrate optim={optim}`; spec `conf/calibrate/{optim}.yaml`. "
              f"Calibration split: WikiText-2 valid.txt, {spec['n_docs']} documents of {spec['seq_len']} tokens per "
              f"model ({', '.join(spec['models'])}); never the evaluated documents. Rule: fewest KV bytes whose "
              f"paired interval's upper end of Δppl is within {100 * spec['budget']:.1f} % on every model.", "",
              *stage_one, markdown(table), "",
              f"Chosen: `{chosen}`" + ("" if met else " (no candidate met the budget: the most accurate one)"), ""]
    out = results_dir / "calibration" / f"{optim}.md"
    out.write_text("\n".join(report))
    if write:
        write_choice(optim, {**{k: v for k, v in fixed.items() if v is not None}, **chosen}, rel)
    return "\n".join(report)
