"""Monitor training on a tiny model: the logic term's formula, both variants end to end, the
rule chosen on validation, loading back through the streaming monitor, and resume after a kill."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from saffron_runtime.models import LoadedModel
from saffron_runtime.monitor import SCMMonitor, load_monitor
from saffron_runtime.testing import tiny_causal_lm
from saffron_runtime.training.monitor_train import MonitorTrainConfig, logic_loss, train_monitor


def test_logic_term_matches_its_formula():
    c_resp = torch.tensor([0.9, 0.1, 0.5])
    c_tok = torch.tensor([0.2, 0.8, 0.5])
    expected = sum(-math.log(1 - r + r * t) for r, t in zip(c_resp.tolist(), c_tok.tolist(), strict=True)) / 3
    assert float(logic_loss(c_resp, c_tok)) == pytest.approx(expected, rel=1e-6)
    assert float(logic_loss(torch.tensor([1.0]), torch.tensor([1.0]))) == pytest.approx(0.0, abs=1e-6)
    assert float(logic_loss(torch.tensor([0.0]), torch.tensor([0.0]))) == pytest.approx(0.0, abs=1e-6)


def _rows(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    words = ["cake", "water", "plan", "help", "safe", "sorry"]
    rows = []
    for i in range(n):
        harmful = i % 2 == 0
        filler = " ".join(words[int(j)] for j in torch.randint(0, 6, (4,), generator=g))
        resp = f"sure. the bomb {filler} bomb kaboom" if harmful else f"sure. {filler} and {filler}"
        rows.append({"id": f"r{seed}-{i}", "prompt": "how make it", "response": resp, "label": int(harmful)})
    return rows


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("mon")
    for name, n, seed in (("train", 24, 0), ("val", 12, 1)):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(n, seed)))
    (d / "prompts.jsonl").write_text("".join(json.dumps({"id": f"p{i}", "prompt": p, "label": lab}) + "\n"
                                             for i, (p, lab) in enumerate([("make bomb", 1), ("bake cake", 0)] * 4)))
    base = d / "base"
    tiny_causal_lm(len(tiny.tokenizer), seed=4).save_pretrained(base)
    tiny.tokenizer.save_pretrained(base)
    return {"train": d / "train.jsonl", "val": d / "val.jsonl", "prompts": d / "prompts.jsonl", "base": base}


@pytest.mark.parametrize("variant", ["heads", "lora"])
def test_train_monitor_end_to_end(tmp_path, files, tiny, variant):
    out = tmp_path / variant
    cfg = MonitorTrainConfig(data=files["train"], val=files["val"], prompt_data=files["prompts"], out=out,
                             base=str(files["base"]), variant=variant, lr=1e-2, epochs=12, batch_size=8,
                             checkpoint_every=10)
    train_monitor(cfg, progress=False)
    state = json.loads(sorted((out / "checkpoints").glob("step-*"))[-1].joinpath("trainer_state.json").read_text())
    losses = state["losses"]
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4
    mon = load_monitor(out)
    assert (out / "adapter").is_dir() == (variant == "lora") and mon.prompt_head is not None
    saved = json.loads((out / "monitor_config.json").read_text())
    assert saved["rule"] == mon.rule.model_dump() and saved["metadata"]["val_macro_f1"] is not None
    assert "Decision rule" in (out / "README.md").read_text()
    verdicts = []
    for r in _rows(6, 7):
        s = SCMMonitor(mon).open(r["prompt"])
        verdicts.append((s.feed_text(r["response"]) or s.finish()) is not None)
    assert sum(v == (i % 2 == 0) for i, v in enumerate(verdicts)) >= 5  # learned: bomb responses flagged


def test_heads_variant_leaves_the_backbone_untouched(tmp_path, files, tiny):
    base = LoadedModel(tiny_causal_lm(len(tiny.tokenizer), seed=4), tiny.tokenizer, "tiny")
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    train_monitor(MonitorTrainConfig(data=files["train"], out=tmp_path / "h", base="tiny", epochs=1, batch_size=8),
                  base=base, progress=False)
    after = base.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_max_steps_stops_early_and_top_layers_limits_lora(tmp_path, files, tiny):
    from peft.tuners.lora import LoraLayer

    base = LoadedModel(tiny_causal_lm(len(tiny.tokenizer), seed=4), tiny.tokenizer, "tiny")
    n_layers = base.model.config.num_hidden_layers
    mon = train_monitor(MonitorTrainConfig(data=files["train"], out=tmp_path / "l", base="tiny", variant="lora",
                                           epochs=3, batch_size=2, max_steps=2, top_layers=1),
                        base=base, progress=False)
    assert mon.metadata["steps"] == 2
    lora_layers = {name.split(".layers.")[1].split(".")[0] for name, m in mon.backbone.named_modules()
                   if isinstance(m, LoraLayer)}
    assert lora_layers == {str(n_layers - 1)}


def _scores(mon, rows: list[dict]) -> list[float]:
    """The response head's harmful probability on each row (the monitor's own scoring path)."""
    out = []
    for r in rows:
        ids = mon.tokenizer(r["response"], add_special_tokens=False)["input_ids"]
        _, s = mon.score(r["prompt"], ids)
        out.append(float(s[-1]))
    return out


@pytest.mark.parametrize("variant", ["heads", "lora"])
def test_init_from_continues_a_saved_monitor_instead_of_starting_fresh(tmp_path, files, variant):
    first = MonitorTrainConfig(data=files["train"], prompt_data=files["prompts"], out=tmp_path / "first",
                               base=str(files["base"]), variant=variant, lr=1e-2, epochs=12, batch_size=8)
    trained = train_monitor(first, progress=False)
    probe = _rows(6, 7)
    # one step at a negligible learning rate: what the run holds is what it started from
    tiny_step = {"base": str(files["base"]), "variant": variant, "lr": 1e-9, "max_steps": 1, "batch_size": 8,
                 "prompt_data": files["prompts"], "data": files["train"]}
    warm = train_monitor(MonitorTrainConfig(out=tmp_path / "warm", init_from=tmp_path / "first", **tiny_step),
                         progress=False)
    cold = train_monitor(MonitorTrainConfig(out=tmp_path / "cold", **tiny_step), progress=False)
    assert _scores(warm, probe) == pytest.approx(_scores(trained, probe), abs=1e-4)
    assert _scores(cold, probe) != pytest.approx(_scores(trained, probe), abs=1e-2)
    assert load_monitor(tmp_path / "warm").metadata["init_from"] == str(tmp_path / "first")


def test_init_from_refuses_a_monitor_of_another_variant_or_lora_shape(tmp_path, files):
    from saffron_runtime.errors import ConfigError

    common = {"data": files["train"], "base": str(files["base"]), "epochs": 1, "batch_size": 8, "max_steps": 1}
    train_monitor(MonitorTrainConfig(out=tmp_path / "heads", **common), progress=False)
    train_monitor(MonitorTrainConfig(out=tmp_path / "r8", variant="lora", lora_r=8, **common), progress=False)
    with pytest.raises(ConfigError, match="--variant heads"):
        train_monitor(MonitorTrainConfig(out=tmp_path / "x", variant="lora", init_from=tmp_path / "heads", **common),
                      progress=False)
    with pytest.raises(ConfigError, match="--lora-r"):
        train_monitor(MonitorTrainConfig(out=tmp_path / "y", variant="lora", lora_r=4, init_from=tmp_path / "r8",
                                         **common), progress=False)
