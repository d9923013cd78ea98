"""The prompt head as a request filter: threshold choice and metrics on hand-made scores; the
GuardedGeneration prompt check refuses before generating."""

from __future__ import annotations

import pytest

from saffron_runtime.errors import DataError
from saffron_runtime.monitor.prompt_eval import LabelledPrompt, choose_prompt_theta, prompt_metrics


def test_theta_is_the_lowest_that_keeps_benign_false_positives_under_the_cap():
    scores = [0.9, 0.8, 0.7, 0.2, 0.6, 0.1, 0.95, 0.3]
    labels = [1, 1, 1, 0, 0, 0, 0, 0]
    # benign scores 0.2, 0.6, 0.1, 0.95, 0.3: at most 1 of 5 may pass with max_fpr 0.2
    assert choose_prompt_theta(scores, labels, max_fpr=0.2) == 0.7
    assert choose_prompt_theta(scores, labels, max_fpr=0.0) == 1.0
    assert choose_prompt_theta(scores, labels, max_fpr=1.0) == 0.1
    with pytest.raises(DataError, match="no benign prompts"):
        choose_prompt_theta([0.5], [1])


def test_prompt_metrics_split_by_label_and_source():
    prompts = [LabelledPrompt(prompt="a", label=1), LabelledPrompt(prompt="b", label=1),
               LabelledPrompt(prompt="c", label=0, source="xstest"), LabelledPrompt(prompt="d", label=0)]
    m = prompt_metrics([0.9, 0.4, 0.8, 0.1], prompts, 0.5)
    assert m["recall_harmful"] == 0.5 and m["fpr_benign"] == 0.5 and m["fpr_xstest_safe"] == 1.0
    assert m["n_harmful"] == 2 and m["n_benign"] == 2
