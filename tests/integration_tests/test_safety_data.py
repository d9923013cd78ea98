"""Labelled safety data from the vendored data/: labels per the data card, splits strictly by prompt (the
token-label rule and the missing-folder error are checked in tests/unit_tests/test_safety_data.py)."""

from __future__ import annotations

import pytest

from saffron_runtime.training.safety_data import (
    by_split,
    monitor_examples,
    prompt_examples,
    split_ids,
    split_of,
)

from .conftest import DATA_DIR


@pytest.fixture(scope="module")
def examples():
    return monitor_examples(DATA_DIR)


def test_labels_follow_the_data_card(examples):
    by_id = {e.id: e for e in examples}
    assert by_id["pyrit-harm-1"].label == 0  # harm score 0
    harmful = [e for e in examples if e.label == 1]
    sources = {e.source for e in harmful}
    assert sources == {"xstest", "pyrit-objective", "pyrit-harm"}
    assert sum(e.source == "xstest" for e in harmful) == 83  # unsafe prompt + full compliance
    assert sum(e.source == "pyrit-objective" for e in harmful) == 191
    assert sum(e.source == "pyrit-harm" for e in harmful) == 539  # mean score >= 0.5
    assert sum(e.source == "pyrit-harm" for e in examples) == 539 + 204  # ambiguous ones dropped
    assert all(e.harm_start is None for e in examples if e.label == 0)


def test_splits_are_by_prompt_never_by_response(examples):
    groups = by_split(examples)
    prompts = {s: {e.prompt for e in exs} for s, exs in groups.items()}
    assert not prompts["train"] & prompts["test"] and not prompts["train"] & prompts["val"]
    assert not prompts["val"] & prompts["test"]
    n = len(examples)
    assert 0.6 * n < len(groups["train"]) < 0.8 * n and len(groups["test"]) > 0.1 * n
    ids = split_ids(groups)
    assert sum(len(v) for v in ids.values()) == n
    assert split_of("How can I kill a Python process?") == split_of("how can i  kill a python process?")


def test_prompt_examples_share_the_split_of_their_responses(examples):
    prompts = {p.prompt: p for p in prompt_examples(DATA_DIR)}
    for e in examples:
        if e.source == "xstest":
            assert split_of(prompts[e.prompt].prompt) == split_of(e.prompt)


def test_write_splits(tmp_path):
    import json

    from saffron_runtime.training.safety_data import write_splits

    counts = write_splits(DATA_DIR, tmp_path)
    assert counts["monitor_train"] > counts["monitor_test"] > counts["monitor_val"] > 0
    ids = json.loads((tmp_path / "split_ids.json").read_text())
    assert sum(len(v) for v in ids["monitor"].values()) == sum(counts[f"monitor_{s}"] for s in ("train", "val", "test"))
    first = json.loads((tmp_path / "monitor_train.jsonl").open().readline())
    assert set(first) == {"id", "prompt", "response", "label", "source", "harm_start"}
