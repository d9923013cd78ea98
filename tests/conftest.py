"""Shared test set-up: offline Hugging Face, a tiny model factory and the real SmolLM2 (session-scoped)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SAFFRON1_FIXTURE = SHARED / "fixtures" / "saffron-1-1b"
SHARED_DATA = SHARED / "data"


@pytest.fixture(scope="session")
def tiny():
    """Tokenizer + tiny random Llama policy + tiny reward backbone sharing the vocabulary."""
    from saffron_runtime.testing import build_tiny_models

    return build_tiny_models("llama", seed=0)


@pytest.fixture(scope="session")
def saved(tmp_path_factory, tiny):
    """Tiny models saved as folders, the way the CLI takes them: ``policy``, ``backbone``, an MRM
    (LoRA on the backbone) and a monitor (heads on the backbone) that never fires by its rule."""
    import torch
    from peft import LoraConfig, get_peft_model

    from saffron_runtime.models import MRMTemplate, MultifurcationRewardModel, load_policy, save_mrm
    from saffron_runtime.monitor import MonitorRule, SCMMonitorModel, save_monitor
    from saffron_runtime.testing import tiny_causal_lm

    d = tmp_path_factory.mktemp("saved")
    for name, seed in (("policy", 0), ("backbone", 1)):
        tiny_causal_lm(len(tiny.tokenizer), seed=seed, eos_token_id=tiny.tokenizer.eos_token_id).save_pretrained(d / name)
        tiny.tokenizer.save_pretrained(d / name)
    mrm_model = get_peft_model(load_policy(d / "backbone").model, LoraConfig(r=2, target_modules=["q_proj"]))
    save_mrm(MultifurcationRewardModel(mrm_model, tiny.tokenizer, MRMTemplate()), d / "mrm", base=str(d / "backbone"))
    torch.manual_seed(0)
    mon = SCMMonitorModel(load_policy(d / "backbone").model, tiny.tokenizer, rule=MonitorRule(theta=1.0, k=50))
    save_monitor(mon, d / "monitor", backbone_ref=str(d / "backbone"))
    return d


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (converted once into the user cache, then ~1 s loads)."""
    from saffron_runtime.models import load_policy

    return load_policy("smollm2", chat=True)


@pytest.fixture(scope="session")
def saffron1_fixture() -> Path:
    """The released Saffron-1 adapter folder (read-only; from ../shared beside the checkout)."""
    if not (SAFFRON1_FIXTURE / "adapter_model.safetensors").is_file():
        pytest.fail(f"the Saffron-1 fixture is missing at {SAFFRON1_FIXTURE}: ../shared must be beside the checkout")
    return SAFFRON1_FIXTURE


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The SmolLM2 standard-suite class runs only the tool-calling and structured-output tests; the
    suite's other tests run on the tiny model (tests/test_standard.py), so they are deselected here
    rather than run twice. Every SmolLM2 test gets the ``smollm2`` marker."""
    from tests.test_standard import TOOL_TESTS

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
