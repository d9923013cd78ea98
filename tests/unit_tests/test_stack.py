"""The one assembler (saffron_runtime.stack) and the one declaration of search settings: every method
ChatSaffron advertises runs from ChatSaffron on the tiny saved models (on SmolLM2 with the bundled models:
tests/integration_tests/test_stack.py); switching method per call loads what it needs; options name their field."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from langchain_saffron.chat_models import ChatSaffron
from saffron_runtime.errors import ConfigError
from saffron_runtime.search.config import METHODS, SEARCH_FIELDS, SearchConfig
from saffron_runtime.stack import StackOptions, build_stack

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"max_tokens": 4, "min_new_tokens": 4, "budget": 2, "num_samples": 2, "prm_children": 2}


@pytest.fixture(scope="module")
def saved_chat(saved):
    """ChatSaffron on the saved tiny folders; greedy first, so the other models load on first use."""
    return ChatSaffron(policy=str(saved / "policy"), mrm=str(saved / "mrm"), monitor=str(saved / "monitor"),
                       method="greedy", **SMALL)


def test_greedy_loads_only_the_policy_and_monitor_then_each_method_loads_its_models(saved_chat):
    assert saved_chat.engine.mrm is None and saved_chat.engine.prm is None
    for method in METHODS:
        msg = saved_chat.bind(method=method).invoke("how make cake")
        stats = msg.response_metadata["saffron"]["stats"]
        assert isinstance(msg.content, str) and msg.content.strip(), method
        assert stats["method"] == method and stats["steps"] == 4
        assert (stats["reward_forwards"] > 0) == (method != "greedy"), method
    stack = saved_chat.stack
    assert saved_chat.engine.mrm is stack.mrm and saved_chat.engine.prm is stack.prm
    assert stack.prm_monitor is stack.monitor_model  # the monitor folder is loaded once for both roles


def test_prm_none_ranks_best_of_n_by_the_mrm_and_prm_beam_says_what_it_needs(saved):
    model = ChatSaffron(policy=str(saved / "policy"), mrm=str(saved / "mrm"), monitor=None, prm=None,
                        method="best_of_n", **SMALL)
    assert model.engine.prm is None and model.engine.mrm is not None
    stats = model.invoke("how make cake").response_metadata["saffron"]["stats"]
    assert stats["method"] == "best_of_n" and stats["reward_forwards"] > 0
    with pytest.raises(ConfigError, match="method='prm_beam' needs a process reward model: pass prm="):
        model.invoke("x", method="prm_beam")


def test_an_explicit_prm_folder_is_the_ranker_without_a_streaming_monitor(saved):
    stack = build_stack(StackOptions(policy=str(saved / "policy"), mrm=None, monitor=None,
                                     prm=str(saved / "monitor"), methods=("prm_beam",)))
    assert stack.streaming_monitor is None and stack.prm_monitor is not None
    assert stack.engine.prm is not None and stack.engine.prm.head is stack.prm_monitor.response_head


def test_options_name_the_bad_field():
    with pytest.raises(ConfigError, match=r"StackOptions\.mrm=3: .*adapter folder"):
        StackOptions(mrm=3)
    with pytest.raises(ConfigError, match=r"StackOptions\.methods"):
        StackOptions(methods=("beam",))
    with pytest.raises(ConfigError, match=r"ChatSaffron\.budget=0: must be >= 1"):
        ChatSaffron(budget=0)


def test_max_tokens_works_per_call_and_in_bind(saved_chat):
    usage = saved_chat.invoke("hi", max_tokens=2, min_new_tokens=2).usage_metadata
    assert usage["output_tokens"] == 2
    bound = saved_chat.bind(max_tokens=3, min_new_tokens=3).invoke("hi").usage_metadata
    assert bound["output_tokens"] == 3


def test_search_settings_have_one_declaration():
    from typer.main import get_command

    from saffron_runtime.cli import app

    for name in SEARCH_FIELDS:  # ChatSaffron's fields are SearchConfig's, with the same default
        assert ChatSaffron.model_fields[name].default == SearchConfig.model_fields[name].default
        assert SearchConfig.model_fields[name].description, name  # documented once, under the field
    commands = get_command(app).commands  # type: ignore[attr-defined]
    generate = {p.name: p.default for p in commands["generate"].params}
    assert {n: generate[n] for n in SEARCH_FIELDS} == {n: SearchConfig.model_fields[n].default for n in SEARCH_FIELDS}
    demo = {p.name: p.default for p in commands["demo"].params}
    assert demo["budget"] == SearchConfig.model_fields["budget"].default and demo["max_new_tokens"] == 40


def _imports(module: str) -> set[str]:
    tree = ast.parse((ROOT / module).read_text())
    names = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    return names | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}


def test_imports_point_one_way():
    assert not any(m.startswith("saffron_runtime.search") for m in _imports("saffron_runtime/monitor/adapters.py"))
    assert "saffron_runtime.models.loading" not in _imports("saffron_runtime/models/smollm2.py")
    assert not any("torch" in m or m.startswith("saffron_runtime.search.")
                   for m in _imports("saffron_runtime/search_fields.py"))


def test_only_the_stack_assembles_generation_models():
    callers = ("langchain_saffron/chat_models.py", "saffron_runtime/cli.py", "saffron_runtime/demo.py",
               "saffron_runtime/evaluation/attack/run.py")
    for path in callers:
        src = (ROOT / path).read_text()
        for loader in ("load_mrm(", "load_monitor(", "response_head_prm(", "SearchEngine("):
            assert loader not in src, (path, loader)
        assert "build_stack(" in src, path
