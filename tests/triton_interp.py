"""Imported first by the fused-kernel tests: skips them cleanly where triton is missing. Without
CUDA they run in Triton's CPU interpreter (TRITON_INTERPRET=1, set in conftest.py before anything
imports triton)."""

import pytest
import torch

pytest.importorskip("triton", reason="the fused KV kernels need the triton package (pip install '.[dev]')")


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """||got - ref|| / ||ref||, in float64."""
    got, ref = got.double(), ref.double()
    return ((got - ref).norm() / ref.norm()).item()
