"""`results/<suite>/report.md`, `summary.csv` and plots from stored rows, one section per scenario
found in the store (quality; decode speed; named measurements), plus the runs that failed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import StoreError
from ..run.store import ResultStore
from . import quality as q
from .peers import markdown as peers_markdown
from .peers import peer_comparison
from .plots import plot_quality_vs_bytes

SECTION_BUILDERS = []  # (scenario, function(df, suite_dir) -> list[str]); speed sections register here


def section(scenario: str):
    def register(fn):
        SECTION_BUILDERS.append((scenario, fn))
        return fn

    return register


def _cell_keys(frame: pd.DataFrame) -> list[tuple]:
    return list(map(tuple, q.with_machine(frame)[q.KEY].itertuples(index=False)))


def _cells(frame: pd.DataFrame) -> set[tuple]:
    return set(_cell_keys(frame))


def sibling_baselines(df: pd.DataFrame, suite_dir: Path) -> pd.DataFrame:
    """Baseline rows another suite of the same results folder measured for this suite's cells (same
    model, machine, content, length; identical documents are checked when pairing): a suite of
    variants (ablations) needs no baseline runs of its own."""
    ok = df[(df.status == "ok") & (df.scenario == "quality")]
    need = _cells(ok) - _cells(ok[ok.optim == q.BASELINE])
    found = []
    for other in sorted(Path(suite_dir).parent.glob("*/runs.csv")):
        if not need:
            break
        if other.parent == Path(suite_dir):
            continue
        rows = ResultStore(other).read()
        base = rows[(rows.status == "ok") & (rows.scenario == "quality") & (rows.optim == q.BASELINE)]
        wanted = [cell in need for cell in _cell_keys(base)]
        hit = base[pd.Series(wanted, index=base.index, dtype=bool)]
        found.append(hit)
        need -= _cells(hit)
    return pd.concat(found) if found else df.iloc[0:0]


def suite_summary(df: pd.DataFrame, suite_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The quality summary of a suite's rows, paired with baselines borrowed where it has none."""
    borrowed = sibling_baselines(df, suite_dir)
    return q.summarize(pd.concat([df, borrowed]) if len(borrowed) else df), borrowed


@section("quality")
def quality_section(df: pd.DataFrame, suite_dir: Path) -> list[str]:
    summary, borrowed = suite_summary(df, suite_dir)
    summary.to_csv(suite_dir / "summary.csv", index=False)
    lines = ["## Quality with the cache in the loop", "", q.method_note(summary), "",
             "KV / 16-bit: exact bytes of every stored tensor (scales, zero-points and windows included) over the same "
             "tokens in a plain 16-bit cache, with any fp32 tensor (this CPU's baseline, some peers' windows and "
             "scales) counted at 16 bits, as a 16-bit deployment holds it. CPU decode speed is context, not evidence "
             "(eager Python steps on a shared CPU); speed evidence comes from the decode scenario on a GPU.", "",
             *([f"Baseline rows from suite(s) {', '.join(sorted(set(borrowed.suite)))} of the same results folder "
                "(same cells, paired on identical documents).", ""] if len(borrowed) else []),
             q.markdown_table(summary), ""]
    against = peer_comparison(df, summary)
    if len(against):
        against.to_csv(suite_dir / "peers.csv", index=False)
    lines += peers_markdown(against)
    for seq_len in sorted(summary.seq_len.unique()):
        name = f"quality_vs_kv_bytes_{int(seq_len)}.png"
        if plot_quality_vs_bytes(summary, suite_dir / name, int(seq_len)):
            lines += [f"![quality vs KV bytes at {int(seq_len)} tokens]({name})", ""]
    return lines


def write_report(suite_dir: Path) -> Path:
    suite_dir = Path(suite_dir)
    store_path = suite_dir / "runs.csv"
    if not store_path.exists():
        raise StoreError(f"no results at {store_path}: run `python -m ollm_bench sweep suite={suite_dir.name}` first")
    df = ResultStore(store_path).read()
    if df.empty:
        raise StoreError(f"{store_path} holds no rows yet")
    from . import speed  # noqa: F401  registers the speed sections

    failed = df[df.status != "ok"]
    devices = ", ".join(sorted(df.device.dropna().unique()))
    libs = ", ".join(sorted({f"torch {a} / transformers {b}" for a, b in zip(df.torch_version, df.transformers_version)}))
    commits = ", ".join(sorted(df.git_commit.dropna().astype(str).unique()))
    lines = [f"# ollm_bench report: suite `{suite_dir.name}`", "",
             f"{len(df)} stored rows ({(df.status == 'ok').sum()} ok, {len(failed)} not ok). Devices: {devices}. "
             f"{libs}. Code: {commits}.", ""]
    for scenario, build in SECTION_BUILDERS:
        if (df[df.status == "ok"].scenario == scenario).any():
            lines += build(df[df.scenario == scenario], suite_dir)
    if len(failed):
        lines += ["## Runs that did not succeed", "", "| model | optim | content | len | batch | status | error |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r.model} | {r.optim} | {r.content} | {r.seq_len} | {r.batch_size} | {r.status} | "
                  f"{str(r.error)[:160]} |" for _, r in failed.iterrows()]
    out = suite_dir / "report.md"
    out.write_text("\n".join(lines) + "\n")
    return out


def tables_for_devices(suite_dir: Path, devices: set[str]) -> str:
    """The report's tables restricted to rows of the machine classes of `devices` (what a sweep just ran;
    any CPU model counts as one class, so a CPU sweep's rows meet the baselines of another CPU)."""
    df = ResultStore(Path(suite_dir) / "runs.csv").read()
    df = df[df.device.map(q.machine_class).isin({q.machine_class(d) for d in devices})]
    out = []
    if (df[df.status == "ok"].scenario == "quality").any():
        summary, _ = suite_summary(df, Path(suite_dir))
        out += [q.markdown_table(summary), "", q.method_note(summary)]
    if (df[df.status == "ok"].scenario == "decode").any():
        from .speed import decode_summary, decode_table

        out += [decode_table(decode_summary(df))]
    from .speed import REFERENCE, metric_table

    for scenario, reference in REFERENCE.items():
        if (df[df.status == "ok"].scenario == scenario).any():
            out += [metric_table(df[df.scenario == scenario], reference)]
    return "\n".join(out) or "no ok rows from this machine"
