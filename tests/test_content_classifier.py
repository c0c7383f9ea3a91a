"""Content classifier on fixed samples and on held-out text (files and templates it was not fitted on)."""

import json
import os
import sysconfig

import pytest

from optim.content_classifier import CLASSES, FEATURES, classify, features
from optim.content_samples import essay_files, evaluate, json_records, labeled, log_lines

STDLIB = sysconfig.get_paths()["stdlib"]


def read(path, n=4000):
    with open(path, encoding="utf-8") as f:
        return f.read()[:n]


FIXED = [
    (lambda: read(os.path.join(STDLIB, "textwrap.py")), "code"),
    (lambda: read(os.path.join(STDLIB, "json", "decoder.py")), "code"),
    (lambda: read(essay_files()[-1]), "prose"),
    (lambda: read(essay_files()[30]), "prose"),
    (lambda: json_records(202), "structured"),
    (lambda: json_records(203), "structured"),
    (lambda: "\n".join(json.dumps({"sepal": i / 10, "petal": i % 7, "label": "setosa"}) for i in range(80)), "structured"),
    (lambda: "\n".join(f"{i},{i * 3 % 17},{i * 0.25:.2f},{i % 2}" for i in range(200)), "structured"),
    (lambda: log_lines(999, "access"), "repetitive"),
    (lambda: log_lines(998, "kv"), "repetitive"),
    (lambda: "ERROR disk full on /dev/sda1, retrying\n" * 60, "repetitive"),
]


@pytest.mark.parametrize("make, label", FIXED)
def test_fixed_samples(make, label):
    result = classify(make())
    assert result.label == label, result.explain(5)
    assert set(result.probabilities) == set(CLASSES)
    assert abs(sum(result.probabilities.values()) - 1) < 1e-9
    assert label in result.explain()


def test_features_are_finite_and_named():
    x = features("def f(x):\n    return x + 1\n")
    assert len(x) == len(FEATURES) and all(v == v and abs(v) < 1e6 for v in x)


def test_held_out_accuracy_at_least_90_percent():
    acc, n, _ = evaluate(labeled("test"), lambda t: classify(t).label)
    assert n >= 200 and acc >= 0.90, (acc, n)


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_text_is_an_error(text):
    with pytest.raises(ValueError, match="cannot classify empty text"):
        classify(text)
