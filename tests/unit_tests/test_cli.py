"""The saffron console script: --version, info, demo and one-line errors."""

from __future__ import annotations

from typer.testing import CliRunner

from saffron_runtime.cli import app

runner = CliRunner()


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.startswith("saffron 0.1.0")


def test_info_reports_versions_cache_and_smollm2(monkeypatch, tmp_path):
    from saffron_runtime import cli

    monkeypatch.setenv("SAFFRON_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cli.console, "width", 400)
    res = runner.invoke(app, ["info"])
    assert res.exit_code == 0, res.output
    for word in ("torch", "transformers", "langchain-core", str(tmp_path), "SmolLM2-135M-Instruct", "installed"):
        assert word in res.output
    assert "converts on first use" in res.output


def leaf_commands(group=None, path=()):
    """Every runnable command of the app, found by walking typer's click tree (groups included)."""
    import typer

    group = group or typer.main.get_command(app)
    for name, cmd in group.commands.items():
        if getattr(cmd, "commands", None):  # a group (typer's own click, so no isinstance)
            yield from leaf_commands(cmd, (*path, name))
        else:
            yield (*path, name)


def test_every_command_has_help_with_an_example():
    commands = list(leaf_commands())
    assert len(commands) >= 10 and ("eval", "monitor") in commands and ("train", "mrm") in commands
    missing = []
    for cmd in commands:
        res = runner.invoke(app, [*cmd, "--help"])
        assert res.exit_code == 0, (cmd, res.output)
        if "Example:" not in res.output or f"saffron {' '.join(cmd)}" not in res.output:
            missing.append(" ".join(cmd))
    assert not missing, f"commands whose --help shows no example of themselves: {missing}"


def test_bad_option_is_one_line():
    res = runner.invoke(app, ["demo", "--max-new-tokens", "0"])
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_invalid_training_setting_is_one_line(tmp_path):
    res = runner.invoke(app, ["train", "mrm", "--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "o"),
                              "--lora-r", "0"])
    assert res.exit_code == 2 and "MRMTrainConfig.lora_r=0: must be >= 1" in res.output and "Traceback" not in res.output
