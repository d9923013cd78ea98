"""Device and dtype discipline without a GPU.

Under ``torch.set_default_device("meta")`` with every model on the CPU, a tensor created without an
explicit device lands on ``meta`` and fails the moment it meets a real one: so these tests catch the
bugs a CUDA run would hit (a host mask applied to device logits, a host generator, a batch never
moved) on a machine that has no GPU. A bfloat16 run checks the search and the monitor end to end.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch

from saffron_runtime.models import LoadedModel, MRMTemplate, MultifurcationRewardModel
from saffron_runtime.monitor import MonitorRule, SCMMonitor, SCMMonitorModel
from saffron_runtime.search import ProcessRewardModel, SearchConfig, SearchEngine
from saffron_runtime.testing import build_tiny_models, tiny_causal_lm
from saffron_runtime.training.judges import chat_prefix_builder

PROMPT = "how make cake"
METHODS = ("saffron", "best_of_n", "prm_beam", "greedy")


@contextlib.contextmanager
def meta_default() -> Iterator[None]:
    """Every tensor created without a device inside the block is a ``meta`` tensor."""
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


def _engine(tiny, dtype: torch.dtype = torch.float32) -> SearchEngine:
    tok = tiny.tokenizer
    ids = dict(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    policy = tiny_causal_lm(len(tok), seed=0, **ids).to(dtype)
    backbone = tiny_causal_lm(len(tok), seed=1, **ids).to(dtype)
    mask = torch.zeros(len(tok), dtype=torch.bool)
    mask[::5] = True
    mrm = MultifurcationRewardModel(backbone, tok, MRMTemplate(prefix="<|im_start|>", separator="\n"),
                                    unseen_mask=mask, token_map=torch.arange(len(tok)))
    torch.manual_seed(0)
    prm = ProcessRewardModel(backbone, torch.nn.Linear(64, 2).to(dtype), chat_prefix_builder(tok))
    return SearchEngine(LoadedModel(policy, tok, "tiny"), mrm, prm)


@pytest.fixture(scope="module")
def fp32_engine():
    return _engine(build_tiny_models("llama", seed=0))


def _search(engine: SearchEngine, method: str, **cfg):
    ids = engine.chat_prompt_ids(PROMPT)
    config = SearchConfig(method=method, max_new_tokens=6, budget=3, num_samples=3, temperature=1.0,
                          prm_children=2, **cfg)
    return engine.search(ids, config, prompt_text=PROMPT)


@pytest.mark.parametrize("method", METHODS)
def test_search_creates_no_tensor_off_the_model_device(fp32_engine, method):
    expected = _search(fp32_engine, method)
    fp32_engine.reset_caches()
    with meta_default():
        got = _search(fp32_engine, method)
    assert got.token_ids == expected.token_ids
    assert len(got.token_ids) > 0


def test_constrained_search_creates_no_tensor_off_the_model_device(fp32_engine):
    from saffron_runtime.constraints import Grammar

    ids = fp32_engine.chat_prompt_ids(PROMPT)
    grammar = Grammar.json_schema(fp32_engine.policy.tokenizer, {"type": "boolean"})
    fp32_engine.reset_caches()
    with meta_default():
        out = fp32_engine.search(ids, SearchConfig(method="greedy", max_new_tokens=4), prompt_text=PROMPT,
                                 constraint=grammar)
    assert out.text in ("true", "false", "t", "tr", "tru", "f", "fa", "fal", "fals")


def test_monitor_session_creates_no_tensor_off_the_model_device(tiny):
    torch.manual_seed(0)
    model = SCMMonitorModel(tiny.reward_backbone, tiny.tokenizer, rule=MonitorRule(theta=1.0, k=50))
    text = "Sure, here is a plan to make cake now."
    expected = SCMMonitor(model).open(PROMPT)
    expected.feed_text(text)
    expected.finish()
    with meta_default():
        got = SCMMonitor(model).open(PROMPT)
        got.feed_text(text)
        got.finish()
    assert got.token_scores == pytest.approx(expected.token_scores, abs=1e-6)
    assert got.tokens_seen == expected.tokens_seen > 0


def test_training_steps_move_batches_to_the_model(tiny):
    from saffron_runtime.training import monitor_train, mrm_train
    from saffron_runtime.training.reward_data import TokenRewardRecord

    tok = tiny.tokenizer
    rec = TokenRewardRecord(id="a", prompt="p", response_ids=[5, 6, 7, 8], rewards=[0.1, 0.2, -0.3, 0.4])
    torch.manual_seed(0)
    monitor = SCMMonitorModel(tiny.reward_backbone, tok)
    with meta_default():
        b = mrm_train._batch([rec], {"a": [1, 2, 3]}, 0, 8, tiny.policy.lm_head.weight.device)
        hidden = tiny.policy.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
        h = hidden.gather(1, b["pos"].unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        head = tiny.policy.lm_head
        loss = mrm_train.partial_supervision_loss(h, head, b["targets"], b["rewards"], b["mask"],
                                                  mrm_train.LOSSES["mse"])
        cfg = monitor_train.MonitorTrainConfig(data="x.jsonl", out="o", base="tiny", batch_size=1)
        step = monitor_train._step_fn(monitor, [([1, 2, 3, 4, 5], 3, [0, 1], 1)], [], cfg, 0)
        out = step(0, [0])
    assert loss.device.type == "cpu" and torch.isfinite(loss)
    assert out.loss.device.type == "cpu" and torch.isfinite(out.loss)


@pytest.mark.parametrize("method", METHODS)
def test_bfloat16_search_and_monitor_end_to_end(method):
    tiny = build_tiny_models("llama", seed=0)
    engine = _engine(tiny, torch.bfloat16)
    assert engine.policy_cache._ensure_pool().dtype == torch.bfloat16
    out = _search(engine, method)
    assert len(out.token_ids) > 0 and out.score == out.score  # not NaN
    torch.manual_seed(0)
    model = SCMMonitorModel(tiny.reward_backbone.to(torch.bfloat16), tiny.tokenizer,
                            rule=MonitorRule(theta=1.0, k=50))
    session = SCMMonitor(model).open(PROMPT)
    session.feed_text(out.text or "cake")
    session.finish()
    assert session.tokens_seen > 0
    assert all(0.0 <= s <= 1.0 for s in session.token_scores)


def test_chat_saffron_device_and_dtype_reach_every_loaded_model(saved):
    from langchain_saffron import ChatSaffron

    chat = ChatSaffron(policy=str(saved / "policy"), mrm=str(saved / "mrm"), monitor=str(saved / "monitor"),
                       device="cpu", dtype="bfloat16", max_new_tokens=4, budget=2)
    stack = chat.stack
    assert stack.policy.model.dtype == torch.bfloat16
    assert stack.mrm.model.dtype == torch.bfloat16
    assert next(stack.monitor_model.backbone.parameters()).dtype == torch.bfloat16
    msg = chat.invoke("how make cake")
    assert msg.response_metadata["saffron"]["stats"]["steps"] == 4
    default = ChatSaffron(policy=str(saved / "policy"), mrm=None, monitor=None, method="greedy")
    assert default.stack.policy.model.dtype == torch.float32 and default.stack.device.type == "cpu"


def test_device_and_dtype_errors_name_the_accepted_values(saved):
    from saffron_runtime.errors import ConfigError
    from saffron_runtime.stack import StackOptions

    with pytest.raises(ConfigError, match="dtype='float8'.*bfloat16"):
        StackOptions(policy=str(saved / "policy"), dtype="float8")
    with pytest.raises(ConfigError, match="not a torch device"):
        StackOptions(policy=str(saved / "policy"), device="gpu0")


def test_cli_generate_takes_device_and_dtype(saved, monkeypatch):
    import json

    from typer.testing import CliRunner

    import saffron_runtime.stack as stack_module
    from saffron_runtime.cli import app

    built = []
    real = stack_module.build_stack

    def spy(options=None, **kw):
        built.append(real(options, **kw))
        return built[-1]

    monkeypatch.setattr(stack_module, "build_stack", spy)
    res = CliRunner().invoke(app, ["generate", "--prompt", "how make cake", "--policy", str(saved / "policy"),
                                   "--mrm", str(saved / "mrm"), "--monitor", "none", "--device", "cpu",
                                   "--dtype", "bfloat16", "--max-new-tokens", "3", "--budget", "2", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["stats"]["steps"] == 3
    assert built[0].policy.model.dtype == torch.bfloat16 and built[0].mrm.model.dtype == torch.bfloat16
