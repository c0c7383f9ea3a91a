"""Append-only results store: `results/<suite>/runs.csv`, one row per run.

Rows are appended with one `write()` under an exclusive `flock`, so concurrent workers never
interleave and a killed process leaves either a whole row or none. `append_new` checks, under the
same lock, that no other worker stored the config meanwhile, so a config is never stored twice.
The store never rewrites existing rows; a file it cannot fully parse is reported (file and line)
and left untouched. Workers on several machines share it through a filesystem they all mount at
the same path with working `flock` (NFSv4, Lustre/BeeGFS/GPFS with flock enabled).
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
from pathlib import Path

import pandas as pd

from ..errors import StoreError

COLUMNS = [
    # identity and what was asked for
    "run_id", "sweep_id", "config_hash", "suite", "scenario", "model", "optim", "optim_kind", "peer", "content",
    "seq_len", "seed", "batch_size", "status", "error",
    # where and with what it ran
    "device", "torch_version", "transformers_version", "versions", "git_commit", "git_dirty", "command",
    "started_at", "wall_s", "isolation",
    # quality: perplexity with the cache in the loop, per document
    "n_docs", "doc_hashes", "scored_tokens", "ppl", "ppl_ci_low", "ppl_ci_high", "doc_nll", "calibration",
    # memory: what the cache holds
    "kv_bytes", "kv_bytes_16bit", "kv_ratio", "kv_storage", "peak_mem_bytes",
    # speed (quality scenario: eager passes on the run's device; context, not GPU evidence)
    "prefill_tok_s", "prefill_tok_s_spread", "decode_tok_s", "decode_tok_s_spread", "ttft_s", "ttft_s_spread",
    "n_repeats",
    # speed at the roofline (decode scenario): one step's time, bytes and bandwidth
    "decode_mode", "kernel", "step_ms", "step_ms_p10", "step_ms_p90", "gpu_busy_ms", "bytes_per_step",
    "achieved_gbps", "copy_gbps", "bw_fraction", "prefill_ms", "quantize_share",
    # one named measurement (attention kernels, allocator workloads): median with p10/p90 over n
    "metric", "metric_unit", "metric_value", "metric_p10", "metric_p90", "metric_n",
    "method_stats", "extra", "identity_json", "config_json",
]
JSON_COLUMNS = ("doc_nll", "doc_hashes", "kv_storage", "method_stats", "extra", "versions", "identity_json",
                "config_json")
STATUSES = ("ok", "failed", "oom", "skipped")
NUMERIC = ("ppl", "ppl_ci_low", "ppl_ci_high", "kv_bytes", "kv_bytes_16bit", "kv_ratio", "peak_mem_bytes",
           "prefill_tok_s", "decode_tok_s", "ttft_s", "prefill_tok_s_spread", "decode_tok_s_spread",
           "ttft_s_spread", "step_ms", "step_ms_p10", "step_ms_p90", "gpu_busy_ms", "bytes_per_step",
           "achieved_gbps", "copy_gbps", "bw_fraction", "prefill_ms", "quantize_share", "metric_value",
           "metric_p10", "metric_p90", "metric_n", "seq_len", "seed", "batch_size", "n_docs", "scored_tokens",
           "n_repeats", "wall_s")


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise StoreError(f"refusing to store a non-finite number ({value})")
        return repr(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


class ResultStore:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def check_writable(self) -> None:
        """Fail before any run starts if rows could not be stored."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a"):
                pass
        except OSError as exc:
            raise StoreError(f"results file {self.path} is not writable: {exc.strerror}") from None

    def append(self, row: dict) -> None:
        self._append(row, None)

    def append_new(self, row: dict, rerun_failed: bool = False) -> bool:
        """Append unless a row that counts as done for row's config_hash is already there
        (checked under the lock: two workers finishing the same config store it once)."""
        return self._append(row, rerun_failed)

    def _append(self, row: dict, rerun_failed: bool | None) -> bool:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise StoreError(f"row has columns the store does not know: {sorted(unknown)}")
        if row.get("status") not in STATUSES:
            raise StoreError(f"row status {row.get('status')!r} is not one of {STATUSES}")
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([_cell(row.get(c)) for c in COLUMNS])
        line = buf.getvalue().encode()
        self.check_writable()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_size == 0:
                header = io.StringIO()
                csv.writer(header, lineterminator="\n").writerow(COLUMNS)
                line = header.getvalue().encode() + line
            else:
                self._validate_tail(fd)
                if rerun_failed is not None and row.get("config_hash") in self._done_locked(fd, rerun_failed):
                    return False
            os.write(fd, line)
            os.fsync(fd)
            return True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _validate_tail(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        if os.pread(fd, 1, size - 1) != b"\n":
            raise StoreError(f"{self.path} ends in a partial row (truncated write?); fix or move it before appending")

    @staticmethod
    def _done_locked(fd: int, rerun_failed: bool) -> set[str]:
        raw = os.pread(fd, os.fstat(fd).st_size, 0).decode("utf-8", errors="replace")
        rows = [r for r in csv.reader(io.StringIO(raw)) if len(r) == len(COLUMNS)][1:]
        return _done(((r[COLUMNS.index("config_hash")], r[COLUMNS.index("status")]) for r in rows), rerun_failed)

    def read(self) -> pd.DataFrame:
        """All rows, validated. Raises StoreError naming the file and line on any corruption."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return pd.DataFrame(columns=COLUMNS)
        raw = self.path.read_bytes()
        if not raw.endswith(b"\n"):
            raise StoreError(f"{self.path} is truncated: its last row has no line end")
        try:
            rows = list(csv.reader(io.StringIO(raw.decode("utf-8")), strict=True))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise StoreError(f"{self.path} is not valid CSV: {exc}") from None
        if rows[0] != COLUMNS:
            raise StoreError(
                f"{self.path} has header {rows[0][:6]}... which is not this version's schema; "
                "move it aside or use another results_dir"
            )
        for n, row in enumerate(rows[1:], start=2):
            if len(row) != len(COLUMNS):
                raise StoreError(f"{self.path} line {n}: {len(row)} fields, expected {len(COLUMNS)} (corrupt row)")
            if row[COLUMNS.index("status")] not in STATUSES:
                raise StoreError(f"{self.path} line {n}: unknown status {row[COLUMNS.index('status')]!r}")
        df = pd.DataFrame(rows[1:], columns=COLUMNS).replace("", None)
        for col in NUMERIC:
            df[col] = pd.to_numeric(df[col], errors="coerce")
        for col in JSON_COLUMNS:
            df[col] = df[col].map(lambda v: json.loads(v) if isinstance(v, str) else None)
        bad = df[(df.status == "ok") & df[["scenario", "device", "config_hash"]].isna().any(axis=1)]
        if len(bad):
            raise StoreError(f"{self.path}: ok row {bad.index[0] + 2} lacks scenario/device/config_hash (corrupt)")
        return df

    def done_hashes(self, rerun_failed: bool = False) -> set[str]:
        df = self.read()
        return _done(zip(df.config_hash, df.status), rerun_failed)


def _done(hash_status, rerun_failed: bool) -> set[str]:
    """Config hashes that count as done: any stored row, or only ok rows when failed ones are re-run."""
    return {h for h, status in hash_status if h and (status == "ok" or not rerun_failed)}
