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


# --- the fitted model is data (optim/content_classifier.json), made by optim/content_fit.py ---------------------
from optim import content_classifier as cc  # noqa: E402
from optim.content_fit import MODEL_PATH, export, fit, predictor, read_model, train_digest  # noqa: E402

GD_CONSTANTS = os.path.join(os.path.dirname(__file__), "content_classifier_gd_constants.json")


def test_classifier_is_loaded_from_its_data_file_with_provenance():
    model = read_model()
    assert cc.MODEL == model and cc.MEANS == model["means"] and cc.WEIGHTS == model["weights"]
    assert model["command"] == "python -m optim.content_samples --fit" and "LogisticRegression" in model["estimator"]
    held = model["accuracy"]["held_out_files"]
    assert held["n"] >= 200 and held["accuracy"] >= 0.90
    assert os.path.basename(MODEL_PATH) == "content_classifier.json"


def test_classify_is_the_scikit_learn_model_it_stores():
    """classify() = predict_proba of a LogisticRegression holding the JSON's coefficients."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    model = read_model()
    lr = LogisticRegression()
    lr.classes_ = np.arange(len(CLASSES))
    lr.coef_ = np.array([model["weights"][c] for c in CLASSES])
    lr.intercept_ = np.array([model["biases"][c] for c in CLASSES])
    for text, _ in labeled("test")[::25]:
        z = (np.array(features(text)) - model["means"]) / np.array(model["scales"])
        want = lr.predict_proba(z[None])[0]
        got = classify(text).probabilities
        assert np.allclose([got[c] for c in CLASSES], want, atol=1e-9)


def test_refit_reproduces_the_shipped_model_and_beats_the_old_constants():
    """The fit (scikit-learn) on this machine's train split: where the samples are the ones the JSON
    was fitted on, it reproduces the JSON; on the same held-out split it is at least as accurate as
    the hand-written gradient-descent constants it replaced."""
    import numpy as np

    train, test = labeled("train"), labeled("test")
    fitted = export(fit(train), train)
    shipped = read_model()
    if fitted["train_digest"] == shipped["train_digest"]:
        for key in ("means", "scales"):
            assert np.allclose(fitted[key], shipped[key], rtol=1e-6, atol=1e-9)
        for c in CLASSES:
            assert np.allclose(fitted["weights"][c], shipped["weights"][c], rtol=1e-4, atol=1e-6)
    assert train_digest(train) == fitted["train_digest"]
    with open(GD_CONSTANTS, encoding="utf-8") as f:
        old = json.load(f)
    acc_fit, n, _ = evaluate(test, predictor(fitted))
    acc_old, _, _ = evaluate(test, predictor(old))
    assert n >= 200 and acc_fit >= acc_old, (acc_fit, acc_old)
