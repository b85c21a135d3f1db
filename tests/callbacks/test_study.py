"""The study runner's bookkeeping: ${step} references, and a step's output reused only with its own settings."""

from __future__ import annotations

import json

import pytest

from callbacks.suite.study import STEP_FILE, check_reuse, resolve


def test_references_resolve_to_earlier_outputs_and_name_the_missing_one():
    outputs = {"clip": "/runs/clip/last.ckpt"}
    assert resolve({"a": ["${clip}", 2], "b": "x ${clip}"}, outputs, "step s") == {
        "a": ["/runs/clip/last.ckpt", 2], "b": "x /runs/clip/last.ckpt"}  # fmt: skip
    with pytest.raises(KeyError, match=r"step s: \$\{llm\} names no earlier step"):
        resolve("${llm}", outputs, "step s")


def test_a_steps_output_is_reused_only_with_the_settings_it_was_made_with(tmp_path):
    made = {"step": {"fit": {"config": "clip", "args": {"trainer.max_epochs": 2}}}, "fast_dev_run": False}
    (tmp_path / "clip").mkdir()
    check_reuse("clip", made, tmp_path)  # nothing recorded yet: fine
    (tmp_path / "clip" / STEP_FILE).write_text(json.dumps(made, sort_keys=True))
    check_reuse("clip", json.loads(json.dumps(made)), tmp_path)  # the same settings: reused
    with pytest.raises(ValueError, match="step 'clip'.*other settings"):
        check_reuse("clip", {**made, "fast_dev_run": True}, tmp_path)  # a smoke run's output is no real run's
    changed = {"step": {"fit": {"config": "clip", "args": {"trainer.max_epochs": 3}}}, "fast_dev_run": False}
    with pytest.raises(ValueError, match="delete that folder"):
        check_reuse("clip", changed, tmp_path)
