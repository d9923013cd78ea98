"""Labelled safety data without the data: the token-label rule and the error for a missing data folder (the
labels and splits of the real sets are checked in tests/integration_tests/test_safety_data.py)."""

from __future__ import annotations

import pytest

from saffron_runtime.errors import DataError
from saffron_runtime.training.safety_data import harm_start, monitor_examples, token_labels


def test_token_label_rule():
    text = "Sure, here is how. First you take the thing."
    start = harm_start(text, 1)
    assert text[start:] == "First you take the thing."
    assert harm_start(text, 1, "all") == 0 and harm_start("One sentence only.", 1) == 0
    assert harm_start(text, 0) is None
    offsets = [(0, 5), (5, 10), (10, 19), (19, 25), (25, 45)]
    assert token_labels(offsets, start) == [0, 0, 0, 1, 1]
    assert token_labels(offsets, None) == [0] * 5


def test_missing_data_dir_is_named(tmp_path):
    with pytest.raises(DataError, match=r"completions.jsonl does not exist; pass the shared data folder"):
        monitor_examples(tmp_path)
