"""The bundled SmolLM2 monitor (C2, heads-only variant): loads offline from the package, is what
ChatSaffron(monitor="bundled") and the demo use, and separates harmful from benign test responses."""

from __future__ import annotations

import json

import pytest

from saffron_runtime.bundled import MONITOR_HEADS, bundled_models, bundled_path
from saffron_runtime.errors import ModelLoadError
from saffron_runtime.monitor import SCMMonitor, evaluate_monitor, load_monitor

from .conftest import SHARED_DATA

pytestmark = pytest.mark.smollm2


@pytest.fixture(scope="module")
def bundled(smollm2):
    return load_monitor(bundled_path(MONITOR_HEADS), backbone=smollm2.model, tokenizer=smollm2.tokenizer)


def test_bundled_monitor_is_shipped_with_its_rule_and_card():
    assert MONITOR_HEADS in bundled_models()
    cfg = json.loads((bundled_path(MONITOR_HEADS) / "monitor_config.json").read_text())
    assert cfg["backbone"] == "smollm2" and cfg["rule"]["name"] in ("delay-k", "k-consecutive", "response-threshold")
    card = (bundled_path(MONITOR_HEADS) / "README.md").read_text()
    for section in ("Reproduce", "Wall time", "Test split", "Licences"):
        assert section in card
    with pytest.raises(ModelLoadError, match="is not in this installation"):
        bundled_path("no-such-model")


def test_bundled_monitor_separates_test_responses(bundled):
    """A fixed sample of the held-out test split (never trained or tuned on)."""
    from saffron_runtime.training.safety_data import by_split, monitor_examples

    test = by_split(monitor_examples(SHARED_DATA))["test"]
    rows = [{"prompt": e.prompt, "response": e.response, "label": e.label} for e in test[::8]]  # every 8th
    m = evaluate_monitor(rows, SCMMonitor(bundled))
    assert m["n"] > 50 and m["macro_f1"] >= 0.7, m  # the full test split gives 0.84 (model card)
