import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# The fused KV kernels' tests (test_kv_triton_*.py) run in Triton's CPU interpreter where there is
# no CUDA. It must be on before anything imports triton (triton wraps its own library functions
# when imported, and some other tests import it through torch), and it must stay on while kernels
# run; nothing else in the suite runs Triton on the CPU, so it is set here, for the session.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parent.parent
# A tiny random model and a short grid: every CLI test finishes in seconds.
TINY = ["suite=single", "model=tiny_random", "model.weights=true", "seq_len=96", "scenario.score_tokens=32",
        "scenario.n_docs=3", "scenario.prefill_chunk=40", "scenario.score_chunk=16", "scenario.decode_tokens=3",
        "scenario.warmup_tokens=8"]


@pytest.fixture(scope="session")
def tiny_model():
    from ollm_bench.models import build_random_model, tiny_gemma3_config

    return build_random_model(tiny_gemma3_config(init_std=0.2), seed=0)


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models are slower with two OpenMP threads fighting over two shared cores.
    torch.set_num_threads(1)


def run_cli(*args, env=None, check=None, timeout=300):
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "ollm_bench", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check is not None:
        assert proc.returncode == check, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture
def cli():
    return run_cli
