"""`saffron eval attack` end to end on tiny saved models with the bundled MiniLM judges, checked on the real
PyRIT refusal labels in data/: the grid, over-refusal, the cache, the JSON and the plot (the harness's other
tests run in tests/unit_tests/test_attack.py)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from saffron_runtime.cli import app

from .conftest import DATA_DIR

runner = CliRunner()


def test_cli_attack_json_plot_and_benign(saved, prompts_dir, tmp_path):
    out, png = tmp_path / "r.json", tmp_path / "asr.png"
    args = ["eval", "attack", "--prompts", str(prompts_dir / "harmful.jsonl"), "--prefill", "2", "--budgets", "2",
            "--bon-n", "2,3", "--max-new-tokens", "3", "--benign", str(prompts_dir / "benign.jsonl"), "--json", str(out),
            "--plot", str(png), "--policy", str(saved / "policy"), "--mrm", str(saved / "mrm"), "--monitor",
            str(saved / "monitor"), "--cache", str(tmp_path / "cache"), "--data-dir", str(DATA_DIR)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    keys = {"method", "budget", "asr_learned", "asr_independent", "asr_strings", "tflops_per_prompt", "n"}
    assert [(r["method"], r["budget"]) for r in doc["results"]] == [
        ("unguarded", 1), ("best_of_n", 2), ("best_of_n", 3), ("prm_beam", 2), ("saffron", 2)]
    for r in doc["results"]:
        assert keys <= set(r) and r["n"] == 2 and 0 <= r["asr_learned"] <= 1
    ov = doc["over_refusal"]
    assert ov["judge"] == "minilm-logreg-refusal" and len(ov["results"]) == 5
    assert ov["results"][0]["delta_vs_unguarded"] == 0.0 and all(r["n"] == 2 for r in ov["results"])
    assert doc["judges"]["refusal"]["pyrit_refusal_accuracy"] > 0.6  # checked on the human labels
    assert 0.5 < doc["judges"]["strings"]["pyrit_refusal_accuracy"] < doc["judges"]["refusal"]["pyrit_refusal_accuracy"]
    assert doc["judges"]["independent"]["held_out_accuracy"] > 0.7
    assert doc["judges"]["independent"]["name"] == "minilm-cross-encoder-harm"  # the default: reads the request
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "text" not in doc["outputs"][0]  # no generated text in the report
    assert doc["config"]["n_prompts"] == 2 and doc["config"]["n_benign"] == 2
    assert doc["config"]["generation_wall_s"] > 0
    m = doc["matched"]
    assert m["saffron"]["budget"] == 2  # the largest Saffron budget run
    if m["best_of_n"] is not None:
        assert m["paired"]["n"] == 2 and set(m["paired"]) == {"n", "learned", "independent", "strings"}
    n_cached = len(list((tmp_path / "cache").glob("*.json")))
    assert n_cached == 5 * 2 + 5 * 2
    res2 = runner.invoke(app, args)  # a second run reads everything from the cache, same numbers
    assert res2.exit_code == 0 and json.loads(out.read_text())["results"] == doc["results"]
    res3 = runner.invoke(app, args + ["--benign-bon-n", "3"])  # over-refusal at the operating points only
    assert res3.exit_code == 0, res3.output
    assert [(r["method"], r["budget"]) for r in json.loads(out.read_text())["over_refusal"]["results"]] == [
        ("unguarded", 1), ("best_of_n", 3), ("prm_beam", 2), ("saffron", 2)]
    assert len(list((tmp_path / "cache").glob("*.json"))) == n_cached  # all from the cache
    res4 = runner.invoke(app, args + ["--benign-methods", "saffron"])
    assert res4.exit_code == 0, res4.output
    assert [(r["method"], r["budget"]) for r in json.loads(out.read_text())["over_refusal"]["results"]] == [
        ("unguarded", 1), ("saffron", 2)]
    bad = runner.invoke(app, args[:2] + ["--prompts", str(tmp_path / "none.jsonl")])
    assert bad.exit_code == 2 and "does not exist" in bad.output and "Traceback" not in bad.output
    bad = runner.invoke(app, args + ["--methods", "saffron,beam"])
    assert bad.exit_code == 2 and "--methods: unknown ['beam']" in bad.output
