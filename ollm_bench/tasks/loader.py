"""`custom_dataset` of every ollm task YAML: local JSONL, built on first use, validated row by row.

lm-eval resolves `!function loader.load` next to the YAML, so the YAML can name its data file
relative to this package (`dataset_kwargs: {data_files: {test: <task>.jsonl}}`) instead of an
absolute path or the working directory, which is what `dataset_path: json` alone would need.
"""

from __future__ import annotations

from ollm_bench.tasks import load_task_data, load_wikitext_data


def load(data_files: dict | None = None, **_ignored):
    """lm-eval passes the task's metadata and dataset_kwargs; only `data_files` matters here."""
    if not data_files or set(data_files) != {"test"}:
        raise ValueError(f"ollm task YAML must give dataset_kwargs.data_files {{test: <task>.jsonl}}, got {data_files!r}")
    return load_task_data(data_files["test"])


def load_wikitext(wikitext_path: str | None = None, **_ignored):
    """`ollm_wikitext2`: the folder comes from the task's metadata or dataset_kwargs (`wikitext_path`),
    else $OLLM_BENCH_WIKITEXT."""
    return load_wikitext_data(wikitext_path)
