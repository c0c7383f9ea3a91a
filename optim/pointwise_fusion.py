"""Fuse a decode step's small element-wise kernels by compiling the model's own code for them.

A captured decode step of a 32-layer Llama is not launch-bound any more, but it still runs ~46
kernels per layer: the large weight GEMVs and the attention, plus ~30 small ones (RMSNorm as six
element-wise kernels, rotary embedding as a dozen, SiLU and the gate product) that cost a few
microseconds each even inside a CUDA graph. Inference servers run fused kernels for these;
`fused_pointwise(model)` gets the same from `torch.compile` (Inductor) applied to transformers' own
functions, so nothing here re-implements the model's math:

- every module whose class is an RMSNorm or an MLP: its class's `forward`, compiled once per class;
- the module-level `apply_rotary_pos_emb` of each attention class's modeling module.

It is a context manager: the patches hold while the step is compiled and captured (the graph keeps
the compiled kernels), and the model is restored afterwards, so a prefill or any other forward of
the same model runs unchanged. Compilation is `dynamic=False` (a decode step has one shape) and
never uses Inductor's own CUDA graphs (the caller captures the whole step).
"""

from __future__ import annotations

import contextlib
import sys
import types

import torch

FUSED_CLASS_SUFFIXES = ("RMSNorm", "MLP")
ROTARY_FUNCTION = "apply_rotary_pos_emb"


@contextlib.contextmanager
def fused_pointwise(model: torch.nn.Module, backend: str = "inductor"):
    """Within the block, `model`'s norms, MLPs and rotary embedding run compiled (see module doc).
    Yields the names of what was fused (empty for a model with none of them). `backend` is
    torch.compile's (Inductor fuses; another backend only checks the patching, e.g. on a machine
    without a C++ compiler for Inductor's CPU code)."""

    def _compile(fn):
        return torch.compile(fn, dynamic=False, fullgraph=True, backend=backend)

    compiled: dict[type, object] = {}
    undo: list[tuple[object, str, object, bool]] = []  # (owner, attribute, old value, had own attribute)
    fused: list[str] = []

    def patch(owner, attr, value):
        own = attr in vars(owner)
        undo.append((owner, attr, vars(owner).get(attr), own))
        setattr(owner, attr, value)

    try:
        for module in model.modules():
            cls = type(module)
            if cls.__name__.endswith(FUSED_CLASS_SUFFIXES):
                if cls not in compiled:
                    compiled[cls] = _compile(cls.forward)
                    fused.append(cls.__name__)
                patch(module, "forward", types.MethodType(compiled[cls], module))
            home = sys.modules.get(cls.__module__)
            rotary = getattr(home, ROTARY_FUNCTION, None) if cls.__name__.endswith("Attention") else None
            if rotary is not None and not getattr(rotary, "_ollm_fused", False):
                fast = _compile(rotary)
                fast._ollm_fused = True
                patch(home, ROTARY_FUNCTION, fast)
                fused.append(f"{cls.__module__.rsplit('.', 1)[-1]}.{ROTARY_FUNCTION}")
        yield fused
    finally:
        for owner, attr, old, own in reversed(undo):
            if own:
                setattr(owner, attr, old)
            else:
                delattr(owner, attr)


__all__ = ["fused_pointwise"]
