"""Rows carry the checkout they were measured from: read per run, so a sweep that outlives a commit
(or an edit) records the new state in its later rows, not the state at its first row."""

from ollm_bench.run import environment


def test_git_state_is_read_again_for_every_run(monkeypatch):
    answers = {"rev-parse": "aaaaaaa", "status": ""}
    monkeypatch.setattr(environment, "_git", lambda *args: answers[args[0]])
    assert environment.git_state() == ("aaaaaaa", False)
    answers.update({"rev-parse": "bbbbbbb", "status": " M optim/kv_int8.py"})  # committed, then edited
    assert environment.git_state() == ("bbbbbbb", True)
    # git status unavailable: dirtiness unknown, never guessed
    monkeypatch.setattr(environment, "_git", lambda *args: None if args[0] == "status" else "bbbbbbb")
    assert environment.git_state() == ("bbbbbbb", None)
