"""The saffron console script end to end on the real SmolLM2: the demo's three prompts through three modes
(the script's other tests run on tiny models in tests/unit_tests/test_cli.py)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from saffron_runtime.cli import app

runner = CliRunner()


@pytest.mark.smollm2
def test_demo_runs_three_prompts_through_three_modes_on_smollm2(smollm2, monkeypatch):
    from saffron_runtime import cli
    from saffron_runtime.demo import run_demo

    monkeypatch.setattr(cli.console, "width", 300)
    res = runner.invoke(app, ["demo", "--prompt", "Name a colour.", "--max-new-tokens", "6", "--budget", "2"])
    assert res.exit_code == 0, res.output
    assert "Saffron search" in res.output and "total" in res.output
    # the verdict line is printed, not swallowed as rich markup ("[monitor did not fire]" looks like a tag)
    assert "monitor did not fire" in res.output or "stopped at token" in res.output
    rows = run_demo(cli.console, prompt="Name a colour.", max_new_tokens=4, budget=2)
    assert [r.prefill != "" for r in rows] == [False, False, True]
    assert all("reward calls" in r.unguarded and "reward calls" in r.saffron for r in rows)  # stats shown
    assert all(" 0 reward calls" in r.unguarded and " 0 reward calls" not in r.saffron for r in rows)
    assert all("monitor did not fire" in r.watched or "stopped at token" in r.watched for r in rows)
