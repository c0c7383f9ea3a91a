"""Imported first by the fused-kernel tests. Without CUDA, Triton kernels run in its CPU
interpreter, which must be on when `triton.jit` wraps them and stay on while they run (Triton
imports parts of itself lazily at the first launch and checks the variable again), so
TRITON_INTERPRET=1 is set for the rest of the session. Nothing else in the suite uses Triton, so
no other test sees a difference. Test modules skip cleanly where triton is missing."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton", reason="the fused KV kernels need the triton package (pip install '.[dev]')")


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """||got - ref|| / ||ref||, in float64."""
    got, ref = got.double(), ref.double()
    return ((got - ref).norm() / ref.norm()).item()
