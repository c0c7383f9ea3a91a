"""Fit the content classifier with scikit-learn and keep the fitted model as data, not code.

    python -m optim.content_samples --fit    # refit on the train split, rewrite content_classifier.json

Model: `StandardScaler` + `LogisticRegression` (multinomial, L2, lbfgs). `C=1.0` is scikit-learn's
default, not tuned: every split but "train" is held out, so nothing is chosen by looking at it.
`class_weight="balanced"`: every class counts the same however many samples its sources yield
(code files give far more chunks than log templates). The fit is deterministic.

The JSON (`MODEL_PATH`, shipped as package data) holds what `classify()` needs (feature means,
scales, per-class weights and biases, in `FEATURES`/`CLASSES` order) plus how it was made: the
command, the estimator, library versions, a digest of the training samples (a test refits and
compares when this machine's samples are the same) and the accuracy on every split.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from typing import Callable

MODEL_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "content_classifier.json")
FIT_COMMAND = "python -m optim.content_samples --fit"
C = 1.0


def train_digest(pairs: list[tuple[str, str]]) -> str:
    """sha256 of the (label, text) samples: the fit is a pure function of these."""
    h = hashlib.sha256()
    for text, label in pairs:
        h.update(f"{label}\0{len(text)}\0".encode())
        h.update(text.encode("utf-8", "replace"))
    return h.hexdigest()


def feature_matrix(pairs: list[tuple[str, str]]):
    import numpy as np

    from .content_classifier import CLASSES, features

    return (np.array([features(t) for t, _ in pairs], dtype=np.float64),
            np.array([CLASSES.index(label) for _, label in pairs]))


def fit(pairs: list[tuple[str, str]]):
    """The fitted scikit-learn pipeline (scaler, logistic regression) on `pairs`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = feature_matrix(pairs)
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight="balanced", max_iter=10_000)).fit(x, y)


def export(pipe, train: list[tuple[str, str]]) -> dict:
    """The JSON-able model: parameters in the order `classify()` uses, and its provenance."""
    import sklearn

    from .content_classifier import CLASSES, FEATURES

    scaler, lr = pipe[0], pipe[-1]
    if list(lr.classes_) != list(range(len(CLASSES))):
        raise ValueError(f"the training samples do not cover every class {CLASSES}")
    return {
        "about": "content classifier of optim/content_classifier.py: standardize FEATURES, then a linear softmax",
        "command": FIT_COMMAND,
        "estimator": f"StandardScaler + LogisticRegression(C={C}, class_weight='balanced', lbfgs, multinomial)",
        "versions": {"python": platform.python_version(), "scikit-learn": sklearn.__version__},
        "train_samples": len(train),
        "train_digest": train_digest(train),
        "classes": list(CLASSES),
        "features": list(FEATURES),
        "means": [float(v) for v in scaler.mean_],
        "scales": [float(v) for v in scaler.scale_],
        "weights": {c: [float(v) for v in lr.coef_[i]] for i, c in enumerate(CLASSES)},
        "biases": {c: float(lr.intercept_[i]) for i, c in enumerate(CLASSES)},
    }


def predictor(model: dict) -> Callable[[str], str]:
    """text -> label under `model` (a dict as `export` makes, e.g. read from the JSON)."""
    from .content_classifier import features, softmax_scores

    def predict(text: str) -> str:
        p = softmax_scores(features(text), model["means"], model["scales"], model["weights"], model["biases"])
        return max(p, key=p.get)

    return predict


def read_model(path: str = MODEL_PATH) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_model(model: dict, path: str = MODEL_PATH) -> str:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(model, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return path


__all__ = ["C", "FIT_COMMAND", "MODEL_PATH", "export", "fit", "predictor", "read_model", "train_digest", "write_model"]
