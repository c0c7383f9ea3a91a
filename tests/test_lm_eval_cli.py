"""`python -m ollm_bench lm-eval`: lm-eval's real command line, offline, with `ollm_cache` on a tiny
random model saved to a local directory. The baseline equals lm-eval's own HFLM sample by sample, a
compressed cache moves every score (it is in the loop), bad model_args are one error line and exit
2, and `compare` pairs two runs' logged samples into a gate verdict."""

import json
import os
import re
import subprocess
import sys

import pytest

from ollm_bench.errors import ConfigError
from ollm_bench.evaluate.lm_eval_model import CacheInLoopLM
from tests.conftest import REPO, run_cli
from tests.tiny_hf import save_tiny_model

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
TASKS = "ollm_cloze_prose,ollm_rolling_prose,tiny_gen"  # loglikelihood, rolling, generate_until
# lm-eval's own entry point, as the issue ran it: our module imported only to register ollm_cache.
LM_EVAL_ITSELF = "import ollm_bench.evaluate.lm_eval_model; from lm_eval.__main__ import cli_evaluate; cli_evaluate()"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def user_tasks(tmp_path_factory):
    """A user's own --include_path folder: one generate_until task over a local JSONL."""
    folder = tmp_path_factory.mktemp("user_tasks")
    rows = [{"question": f"Count {i}: one two three four five six seven eight nine", "answer": " ten"} for i in range(4)]
    (folder / "tiny_gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "tiny_gen.yaml").write_text(f"""task: tiny_gen
dataset_path: json
dataset_kwargs: {{data_files: {{test: {folder / 'tiny_gen.jsonl'}}}}}
output_type: generate_until
test_split: test
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs: {{until: ["\\n"], max_gen_toks: 6, do_sample: false}}
metric_list: [{{metric: exact_match, aggregation: mean, higher_is_better: true}}]
metadata: {{version: 1.0}}
""")
    return folder


@pytest.fixture(scope="module")
def runs(tiny_dir, user_tasks, tmp_path_factory):
    """Three runs at once (each is mostly imports): the baseline and HFLM through our command (our
    tasks added to the user's --include_path), kv_int8 through lm-eval's own entry point."""
    out = tmp_path_factory.mktemp("lm_eval_out")
    common = ["--limit", "3", "--log_samples", "--device", "cpu"]
    ours = [sys.executable, "-m", "ollm_bench", "lm-eval", "run", "--include_path", str(user_tasks), "--tasks", TASKS]
    commands = {
        "baseline": [*ours, "--model", "ollm_cache", "--model_args", f"model={tiny_dir}"],
        "hf": [*ours, "--model", "hf", "--model_args", f"pretrained={tiny_dir},dtype=float32"],
        "kv_int8": [sys.executable, "-c", LM_EVAL_ITSELF, "run", "--model", "ollm_cache",
                    "--model_args", f"model={tiny_dir},optim=kv_int8", "--include_path", str(REPO / "ollm_bench/tasks"),
                    "--tasks", TASKS.replace("tiny_gen", str(user_tasks / "tiny_gen.yaml"))],
    }
    env = {**os.environ, **OFFLINE, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    procs = {name: subprocess.Popen([*cmd, *common, "--output_path", str(out / name)], cwd=REPO, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name, cmd in commands.items()}
    logs = {name: p.communicate(timeout=600)[0] for name, p in procs.items()}
    for name, p in procs.items():
        assert p.returncode == 0, f"{name}:\n{logs[name][-4000:]}"
    return out


def _samples(out_dir) -> dict[str, dict[int, dict]]:
    from ollm_bench.evaluate.lm_eval_cli import load_run

    _, samples = load_run(out_dir)
    return {task: {s["doc_id"]: s for s in rows} for task, rows in samples.items()}


def _loglikelihoods(samples: dict) -> dict[tuple[str, int], float]:
    return {**{("cloze", d): s["perplexity"] for d, s in samples["ollm_cloze_prose"].items()},
            **{("rolling", d): s["word_perplexity"][0] for d, s in samples["ollm_rolling_prose"].items()}}


def test_baseline_equals_hflm_and_int8_cache_moves_every_score(runs):
    base, hf, int8 = _samples(runs / "baseline"), _samples(runs / "hf"), _samples(runs / "kv_int8")
    assert {len(v) for s in (base, hf, int8) for v in s.values()} == {3}
    ll_base, ll_hf, ll_int8 = _loglikelihoods(base), _loglikelihoods(hf), _loglikelihoods(int8)
    assert ll_base == pytest.approx(ll_hf, rel=1e-5, abs=1e-3)
    assert all(abs(ll_int8[k] - ll_base[k]) > 1e-6 for k in ll_base), (ll_base, ll_int8)
    # is_greedy and the generated text are HFLM's too.
    assert [s["acc"] for s in base["ollm_cloze_prose"].values()] == [s["acc"] for s in hf["ollm_cloze_prose"].values()]
    assert [s["filtered_resps"] for s in base["tiny_gen"].values()] == [s["filtered_resps"] for s in hf["tiny_gen"].values()]


def test_compare_real_runs(runs):
    same = run_cli("lm-eval", "compare", str(runs / "hf"), str(runs / "baseline"), check=0)
    for metric in ("acc", "perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "exact_match"):
        assert f" {metric}: baseline" in same.stdout
    assert same.stdout.count("gate pass") == 4  # the perplexities; 3 documents decide no accuracy
    moved = run_cli("lm-eval", "compare", str(runs / "baseline"), str(runs / "kv_int8"))
    assert moved.returncode in (0, 1) and "optim': 'kv_int8'" in moved.stdout
    assert "Tango score interval for paired proportions, n=3" in moved.stdout


@pytest.mark.parametrize("model_args,message", [
    ("optim=no_such_method", r"unknown optim 'no_such_method' for ollm_cache; choose one of .*kv_int8"),
    ("pretrained=x", r"unknown ollm_cache model_args \['pretrained'\]; known: model, optim"),
])
def test_bad_model_args_are_one_error_line(model_args, message, capsys, monkeypatch):
    from ollm_bench.cli import main

    monkeypatch.setattr(sys, "argv", list(sys.argv))  # lm-eval's parser reads sys.argv; ours sets it
    with pytest.raises(SystemExit) as exc:
        main(["lm-eval", "run", "--model", "ollm_cache", "--model_args", model_args, "--tasks", "ollm_cloze_prose",
              "--limit", "1", "--device", "cpu"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ollm_bench: error:")]
    assert exc.value.code == 2 and len(errors) == 1 and re.search(message, errors[0])


def test_missing_model_exit_code_from_a_real_process():
    """Found only when lm-eval builds the model, after its own setup: still one line and exit 2."""
    proc = run_cli("lm-eval", "run", "--model", "ollm_cache", "--model_args", "model=/no/such/model,optim=kv_mixed",
                   "--tasks", "ollm_cloze_prose", "--limit", "1", env=OFFLINE, check=2)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ollm_bench: error:")]
    assert "Traceback" not in proc.stderr and len(errors) == 1
    assert "model '/no/such/model': no such local directory" in errors[0]


@pytest.mark.parametrize("bad", [{"optim": "nope"}, {"bogus": 1}, {"model": "/no/such/dir"}, {"dtype": "int3"}])
def test_string_and_dict_model_args_validate_alike(bad):
    as_string = ",".join(f"{k}={v}" for k, v in bad.items())
    with pytest.raises(ConfigError) as from_obj:
        CacheInLoopLM.create_from_arg_obj(bad, {"device": "cpu"})
    with pytest.raises(ConfigError) as from_string:
        CacheInLoopLM.create_from_arg_string(as_string, {"device": "cpu"})
    assert str(from_obj.value) == str(from_string.value)


def test_both_constructions_build_the_same_model_with_routing(tiny_dir):
    from lm_eval.api.instance import Instance

    req = [Instance("loglikelihood", {}, ("Some context for the tiny model, " * 4, " and more"), 0)]
    a = CacheInLoopLM.create_from_arg_obj({"model": str(tiny_dir), "optim": "attn_router", "max_length": 256},
                                          {"device": "cpu", "batch_size": 1})
    b = CacheInLoopLM.create_from_arg_string(f"model={tiny_dir},optim=attn_router,max_length=256", {"device": "cpu"})
    assert a.name == b.name == f"{tiny_dir}/attn_router" and a.max_length == b.max_length == 256
    assert a.loglikelihood(req) == b.loglikelihood(req)
    # The router picked per request (attached for it), and detach restores the model's attention.
    assert sum(a.router_choices.values()) == 1 and a.model.config._attn_implementation.startswith("attn_")
    a.detach()
    assert a.model.config._attn_implementation == "sdpa"


def test_help_and_include_path(capsys, monkeypatch):
    from ollm_bench.cli import main
    from ollm_bench.evaluate.lm_eval_cli import include_paths
    from ollm_bench.tasks import TASK_DIR

    monkeypatch.setattr(sys, "argv", list(sys.argv))
    with pytest.raises(SystemExit) as exc:
        main(["lm-eval", "run", "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "ollm_bench/tasks added to --include_path" in out and "--log_samples" in out
    assert include_paths(None) == [str(TASK_DIR)]
    assert include_paths("mine") == ["mine", str(TASK_DIR)] and include_paths(str(TASK_DIR)) == [str(TASK_DIR)]


def _fake_run(folder, task: str, metric: str, values: dict[int, object], args: str = "optim=x"):
    """What lm-eval writes with --output_path folder --log_samples: results and samples, one date."""
    sub = folder / "model"
    sub.mkdir(parents=True)
    results = {"config": {"model": "ollm_cache", "model_args": args, "limit": None}, "configs": {task: {}}}
    (sub / "results_2026-01-01T00-00-00.json").write_text(json.dumps(results))
    rows = [{"doc_id": d, "filter": "none", "metrics": [metric], metric: v} for d, v in values.items()]
    (sub / f"samples_{task}_2026-01-01T00-00-00.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_compare_gate_fails_for_a_lost_accuracy(tmp_path, capsys):
    from ollm_bench.cli import main

    base = _fake_run(tmp_path / "base", "t", "acc", {i: 1 for i in range(40)}, "optim=baseline")
    worse = _fake_run(tmp_path / "worse", "t", "acc", {i: int(i % 2) for i in range(40)})
    with pytest.raises(SystemExit) as exc:
        main(["lm-eval", "compare", str(base), str(worse)])
    captured = capsys.readouterr()
    assert exc.value.code == 1 and "ollm_bench: error: gate failed: t acc" in captured.err
    assert "t acc: baseline 1, method 0.5; loss +50.0 pts [" in captured.out
    assert "(95 % Tango score interval for paired proportions, n=40); gate fail" in captured.out


def test_compare_passes_equal_perplexity_and_names_bad_inputs(tmp_path, capsys):
    from ollm_bench.cli import main

    ppl = {i: [-100.0 - i, 20] for i in range(5)}
    base, same = _fake_run(tmp_path / "a", "r", "word_perplexity", ppl), _fake_run(tmp_path / "b", "r", "word_perplexity", ppl)
    main(["lm-eval", "compare", str(base), str(same)])
    assert "loss +0.00% [+0.00, +0.00] (95 % paired t-interval over documents, n=5); gate pass" in capsys.readouterr().out
    (same / "model" / "samples_r_2026-01-01T00-00-00.jsonl").unlink()
    _fake_run(tmp_path / "a" / "again", "r", "word_perplexity", ppl)
    for args, why in [([str(next(base.glob("model/results_*.json"))), str(same)], "run lm-eval with --log_samples"),
                      ([str(base), str(same)], "expected one lm-eval results_*.json, found"),
                      ([str(base)], "compare takes two lm-eval outputs")]:
        with pytest.raises(SystemExit) as exc:
            main(["lm-eval", "compare", *args])
        assert exc.value.code == 2 and why in capsys.readouterr().err
