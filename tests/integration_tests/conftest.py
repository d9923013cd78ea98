"""Integration-tier set-up: the real SmolLM2 (session-scoped), the vendored safety data in data/ and the
deselection of the standard-suite tests that already run on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parents[2] / "data"


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (converted once into the user cache, then ~1 s loads)."""
    from saffron_runtime.models import load_policy

    return load_policy("smollm2", chat=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The SmolLM2 standard-suite class runs only the tool-calling and structured-output tests; the
    suite's other tests run on the tiny model (tests/unit_tests/test_standard.py), so they are
    deselected here rather than run twice. Every SmolLM2 test gets the ``smollm2`` marker."""
    from .test_standard import TOOL_TESTS

    keep, drop = [], []
    for item in items:
        cls = getattr(item, "cls", None)
        if cls is not None and cls.__name__ == "TestChatSaffronSmolLM2Tools":
            if not any(t in item.name for t in TOOL_TESTS):
                drop.append(item)
                continue
            item.add_marker(pytest.mark.smollm2)
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
