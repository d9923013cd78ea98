"""A corpus of bad inputs, tried as a new user would: each gives a clear error that names the problem
(and mostly the fix), or a documented sane result (docs/bad-inputs.md); none may surface as an
internal TypeError, AttributeError, KeyError or IndexError. Tiny models and the ``saved`` folders."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from typer.testing import CliRunner

from langchain_saffron.callbacks import SaffronGuardCallbackHandler
from langchain_saffron.chat_models import ChatSaffron
from langchain_saffron.middleware import SaffronGuardrailMiddleware
from langchain_saffron.rollouts import SafeRolloutSelector
from saffron_runtime.cli import app
from saffron_runtime.errors import ConfigError, ModelLoadError, PromptError, SaffronError
from saffron_runtime.models import LoadedModel
from saffron_runtime.monitor import CallableMonitor, MonitorRule, SCMMonitor, SCMMonitorModel
from saffron_runtime.rewards import egrpo_rewards, grpo_advantages

INTERNAL = (TypeError, AttributeError, KeyError, IndexError, NotImplementedError, UnicodeError)
runner = CliRunner()


@pytest.fixture(scope="module")
def model(tiny) -> ChatSaffron:
    return ChatSaffron(policy=LoadedModel(tiny.policy, tiny.tokenizer, "tiny-llama"), mrm=None, prm=None,
                       monitor=None, method="greedy", max_tokens=4)


@pytest.fixture(scope="module")
def scm(tiny) -> SCMMonitor:
    return SCMMonitor(SCMMonitorModel(tiny.reward_backbone, tiny.tokenizer, rule=MonitorRule(theta=1.0, k=4096)))


def expect(fn: Callable[[], Any], error: type[BaseException], match: str) -> None:
    """``fn()`` raises ``error`` whose message matches ``match``, and is not an internal error."""
    with pytest.raises(BaseException) as e:
        fn()
    assert isinstance(e.value, error), f"{type(e.value).__name__}: {e.value}"
    assert not isinstance(e.value, INTERNAL) or isinstance(e.value, SaffronError), repr(e.value)
    assert re.search(match, str(e.value)), str(e.value)


# ---------------------------------------------------------------------- ChatSaffron settings
SETTINGS = {
    "monitor=42": ({"monitor": 42}, "StackOptions.monitor=42.*give 'auto', 'bundled'"),
    "mrm=3.5": ({"mrm": 3.5}, "StackOptions.mrm=3.5.*give 'auto', 'bundled'"),
    "budget=0": ({"budget": 0}, r"budget=0: must be >= 1"),
    "temperature=-1": ({"temperature": -1.0}, r"temperature"),
    "method=nope": ({"method": "nope"}, r"method.*greedy"),
    "on_violation=explode": ({"on_violation": "explode"}, r"on_violation.*raise"),
    "max_tokens=0": ({"max_tokens": 0}, r"max_new_tokens|max_tokens"),
    "stop=['']": ({"stop": [""]}, r"empty stop string"),
    "json_max_string_length=0": ({"json_max_string_length": 0}, r"json_max_string_length"),
    "unknown field": ({"bugdet": 3}, r"bugdet"),
}


@pytest.mark.parametrize("case", SETTINGS, ids=list(SETTINGS))
def test_bad_chat_saffron_settings(tiny, case):
    kw, match = SETTINGS[case]
    policy = LoadedModel(tiny.policy, tiny.tokenizer, "tiny-llama")
    args = {"policy": policy, "mrm": None, "prm": None, "monitor": None, "method": "greedy", **kw}
    expect(lambda: ChatSaffron(**args), ConfigError, match)


PER_CALL = {
    "unknown per-call setting": ({"bugdet": 3}, ConfigError, r"unknown setting\(s\) \['bugdet'\]"),
    "max_tokens=-1 per call": ({"max_tokens": -1}, ConfigError, r"max_new_tokens"),
    "stop=[''] per call": ({"stop": [""]}, ConfigError, r"empty stop string"),
    "on_violation per call": ({"on_violation": "explode"}, ConfigError, r"on_violation"),
}


@pytest.mark.parametrize("case", PER_CALL, ids=list(PER_CALL))
def test_bad_per_call_settings(model, case):
    kw, error, match = PER_CALL[case]
    expect(lambda: model.invoke("hi", **kw), error, match)


def test_max_tokens_is_accepted_per_call_and_by_bind(model):
    assert model.invoke("hi", max_tokens=2).response_metadata["saffron"]["stats"]["steps"] == 2
    assert model.bind(max_tokens=3).invoke("hi").response_metadata["saffron"]["stats"]["steps"] == 3


# ---------------------------------------------------------------------- prompts
PROMPTS = {
    "empty string": ("", r"the prompt is empty"),
    "whitespace only": ("   \n", r"the prompt is empty"),
    "empty message list": ([], r"the message list is empty"),
    "only empty messages": ([HumanMessage("")], r"the prompt is empty"),
    "bytes": (b"\x00\xff", r"the input is bytes.*decode it first"),
    "an int": (42, r"cannot read the input \(int\)"),
    "unknown role": ([{"role": "alien", "content": "x"}], r"cannot read the input"),
    "lone surrogate": ("hi \ud800 there", r"lone surrogate '\\ud800' at character 3"),
    "50k characters": ("word " * 10_000, r"more than the policy's context of 1024; shorten the prompt"),
}


@pytest.mark.parametrize("case", PROMPTS, ids=list(PROMPTS))
def test_bad_prompts(model, case):
    prompt, match = PROMPTS[case]
    expect(lambda: model.invoke(prompt), PromptError, match)


def test_a_streamed_lone_surrogate_is_judged_as_a_replacement_character(scm):
    s = scm.open("q")
    assert s.feed_text("ab\ud800cd ") is None and s.finish() is None
    assert s.release_all() == "ab\ufffdcd "  # documented: replaced, as a UTF-8 decoder would


def test_a_prompt_past_the_monitors_context_keeps_its_tail(scm, caplog):
    s = scm.open("word " * 2_000)  # ~8000 monitor tokens, the tiny backbone reads 1024
    assert "past half the monitor's context" in caplog.text and len(s._prefix) == 512
    assert s.feed_text("fine text ") is None and s.finish() is None


# ---------------------------------------------------------------------- model files
def test_missing_model_folders(tmp_path):
    expect(lambda: ChatSaffron(policy=str(tmp_path / "nope"), mrm=None, monitor=None), SaffronError, "nope")
    expect(lambda: ChatSaffron(policy="smollm2", mrm=None, monitor=str(tmp_path / "nomon")), SaffronError,
           "nomon")


def test_corrupt_policy_weights(saved, tmp_path):
    bad = tmp_path / "policy"
    shutil.copytree(saved / "policy", bad)
    for f in bad.glob("*.safetensors"):
        f.write_bytes(b"not a safetensors file")
    expect(lambda: ChatSaffron(policy=str(bad), mrm=None, monitor=None), ModelLoadError, "policy")


def test_corrupt_monitor_heads(saved, tmp_path):
    bad = tmp_path / "monitor"
    shutil.copytree(saved / "monitor", bad)
    (bad / "heads.safetensors").write_bytes(b"\x00" * 16)
    expect(lambda: ChatSaffron(policy=str(saved / "policy"), mrm=None, monitor=str(bad)), ModelLoadError,
           "heads.safetensors")


def test_wrong_vocabulary_mrm(tiny):
    from transformers import AutoTokenizer

    from saffron_runtime.errors import TokenizerMismatchError
    from saffron_runtime.models import MRMTemplate, MultifurcationRewardModel

    tok = AutoTokenizer.from_pretrained(tiny.tokenizer.name_or_path) if tiny.tokenizer.name_or_path else None
    tok = tok or __import__("copy").deepcopy(tiny.tokenizer)
    tok.add_tokens(["<extra_a>", "<extra_b>"])
    mrm = MultifurcationRewardModel(tiny.reward_backbone, tok, MRMTemplate())
    policy = LoadedModel(tiny.policy, tiny.tokenizer, "tiny-llama")
    expect(lambda: ChatSaffron(policy=policy, mrm=mrm, monitor=None, prm=None).invoke("hi"),
           TokenizerMismatchError, r"MRM|vocabular|tokeni[sz]er")


# ---------------------------------------------------------------------- tools
TOOLS = {
    "a number as a tool": ([42], r"42|tool"),
    "a schema without a name": ([{"description": "x", "parameters": {}}], r"Unsupported function.*\n.*|OpenAI function format"),
}


@pytest.mark.parametrize("case", TOOLS, ids=list(TOOLS))
def test_malformed_tool_schemas(model, case):
    tools, match = TOOLS[case]
    expect(lambda: model.bind_tools(tools).invoke("hi"), (ValueError, SaffronError), match)


def test_tool_choice_naming_an_unknown_tool(model):
    @tool
    def search(query: str) -> str:
        """Search."""
        return query

    expect(lambda: model.bind_tools([search], tool_choice="nosuch").invoke("hi"), ConfigError, "nosuch")


# ---------------------------------------------------------------------- guards and monitors
def test_guards_refuse_what_is_not_a_monitor():
    expect(lambda: SaffronGuardCallbackHandler(None), ConfigError, r"needs a streaming monitor.*NoneType")
    expect(lambda: SaffronGuardrailMiddleware("bundled-please"), ConfigError, r"needs a streaming monitor")
    expect(lambda: CallableMonitor(lambda p, t: 0.0, timeout_s=0), ConfigError, r"timeout_s=0 must be > 0")
    expect(lambda: SCMMonitor(None, max_text_chars=0), ConfigError, r"max_text_chars=0 must be >= 1")
    expect(lambda: MonitorRule(theta=2.0), ConfigError, r"theta")


from tests.unit_tests.test_middleware import ToolFake  # noqa: E402 - streams its tool calls


@pytest.mark.parametrize("size", [100_000, 1_000_000])
def test_a_huge_tool_result_is_withheld_at_once(scm, size):
    @tool
    def fetch(url: str) -> str:
        """Fetch a page."""
        return "word " * (size // 5)

    script = [AIMessage("", tool_calls=[{"name": "fetch", "args": {"url": "x"}, "id": "c1"}]), AIMessage("done")]
    guard = SaffronGuardrailMiddleware(scm, on_violation="refuse")
    t0 = time.perf_counter()
    out = create_agent(ToolFake(messages=iter(script)), tools=[fetch], middleware=[guard]).invoke(
        {"messages": [HumanMessage("q")]})
    assert time.perf_counter() - t0 < 10
    tool_msg = next(m for m in out["messages"] if isinstance(m, ToolMessage))
    assert tool_msg.content.startswith("[tool result withheld") and "max_text_chars=65536" in tool_msg.content


def test_a_long_text_slides_the_monitors_window(tiny):
    mon = SCMMonitor(SCMMonitorModel(tiny.reward_backbone, tiny.tokenizer, rule=MonitorRule(theta=1.0, k=4096)),
                     max_text_chars=10**6)
    s = mon.open("q")
    seen = []
    real = s._forward

    def spy(ids: list[int]) -> Any:
        seen.append(s._pos + len(ids))
        return real(ids)

    s._forward = spy
    text = "plan " * 2_500  # 2,500 tokens past a 1024 context
    assert s.feed_text(text) is None and s.finish() is None
    assert s.tokens_seen > 2 * 1024 and max(seen) <= 1024  # the cache never grew past the context
    assert s.release_all() == text


# ---------------------------------------------------------------------- rewards and rollouts
REWARDS = {
    "all None": ((None, None, None), r"thoughts must be a list of strings.*got NoneType"),
    "a None flag": ((["a"], ["Paris"], [None]), r"correct\[0\] is None"),
    "a string for a list": (("abc", ["Paris"], [True]), r"thoughts must be a list"),
    "entities None": ((["a"], None, [True]), r"entities must be a list"),
    "no gold entities": ((["a"], [], [True]), r"gold entity list is empty"),
    "flags of the wrong length": ((["a", "b"], ["Paris"], [True]), r"correct has 1 flags but there are 2"),
}


@pytest.mark.parametrize("case", REWARDS, ids=list(REWARDS))
def test_bad_reward_inputs(case):
    args, match = REWARDS[case]
    expect(lambda: egrpo_rewards(*args), ConfigError, match)


def test_empty_reward_groups_are_empty():
    assert egrpo_rewards([], ["Paris"], []) == [] and grpo_advantages([]) == ([], [])


def test_zero_rollouts(scm):
    expect(lambda: SafeRolloutSelector(ToolFake(messages=iter([])), scm, n=0), ConfigError, r"n=0")


# ---------------------------------------------------------------------- the command line
def one_line_error(args: list[str], match: str) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code in (1, 2), (res.exit_code, res.output)
    assert "Traceback" not in res.output and re.search(match, res.output), res.output


CLI_SETTINGS = {
    "generate --budget 0": (["generate", "--prompt", "hi", "--budget", "0"], r"budget"),
    "generate --method nope": (["generate", "--prompt", "hi", "--method", "nope"], r"method|nope"),
    "generate --top-p 2": (["generate", "--prompt", "hi", "--top-p", "2"], r"top.p"),
    "train mrm --lora-r 0": (["train", "mrm", "--data", "d.jsonl", "--out", "o", "--lora-r", "0"], r"lora_r=0"),
}


@pytest.mark.parametrize("case", CLI_SETTINGS, ids=list(CLI_SETTINGS))
def test_bad_cli_settings(case):
    args, match = CLI_SETTINGS[case]
    one_line_error(args, match)


MALFORMED = '{"prompt": "ok", "response": "fine", "label": 0}\n{"prompt": "broken\n'


def jsonl_commands(saved: Any, bad: str, tmp: Any) -> dict[str, list[str]]:
    mon, pol = str(saved / "monitor"), str(saved / "policy")
    return {
        "eval monitor": ["eval", "monitor", "--data", bad, "--monitor", mon],
        "eval prompts": ["eval", "prompts", "--data", bad, "--monitor", mon],
        "eval responses": ["eval", "responses", "--val", bad, "--monitor", mon],
        "eval mrm": ["eval", "mrm", "--data", bad, "--mrm", str(saved / "mrm"), "--policy", pol,
                     "--judge-monitor", mon],
        "eval attack": ["eval", "attack", "--prompts", bad, "--policy", pol, "--mrm", str(saved / "mrm"),
                        "--monitor", mon],
        "train mrm": ["train", "mrm", "--data", bad, "--out", str(tmp / "o1"), "--base", pol],
        "train monitor": ["train", "monitor", "--data", bad, "--out", str(tmp / "o2"), "--base", pol],
        "data rewards": ["data", "rewards", "--prompts", bad, "--out", str(tmp / "r.jsonl"), "--policy", pol,
                         "--judge-monitor", mon],
        "data merge-children": ["data", "merge-children", "--data", bad, "--out", str(tmp / "m.jsonl")],
    }


@pytest.mark.parametrize("command", ["eval monitor", "eval prompts", "eval responses", "eval mrm", "eval attack",
                                     "train mrm", "train monitor", "data rewards", "data merge-children"])
def test_malformed_jsonl_in_every_cli_that_reads_one(saved, tmp_path, command):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(MALFORMED)
    one_line_error(jsonl_commands(saved, str(bad), tmp_path)[command], r"bad\.jsonl:[12]: ")


def test_eval_monitor_takes_bundled(tmp_path, monkeypatch):
    from saffron_runtime.monitor import model as monitor_model

    seen = []
    monkeypatch.setattr(monitor_model, "load_monitor", lambda folder, **kw: seen.append(folder) or 1 / 0)
    res = runner.invoke(app, ["eval", "monitor", "--data", str(tmp_path / "d.jsonl"), "--monitor", "bundled"])
    assert seen == ["bundled"] and "Traceback" not in res.output
