"""The shared training loop on a linear model: seeded epochs, the step cap, and a run stopped
mid-way that resumes from its checkpoint to exactly what an uninterrupted run gives."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import pytest
import torch

from saffron_runtime.errors import SearchCancelled
from saffron_runtime.training.loop import StepOutput, batch_indices, total_steps, train_loop

X = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
Y = X @ torch.tensor([1.0, -2.0, 0.5])


def _cfg(**kw) -> SimpleNamespace:
    return SimpleNamespace(**{"epochs": 3, "batch_size": 4, "seed": 7, "checkpoint_every": 2,
                              "max_steps": None, **kw})


def test_every_epoch_is_a_seeded_permutation_and_max_steps_caps():
    cfg = _cfg()
    per_epoch, total = total_steps(10, cfg)
    assert (per_epoch, total) == (3, 9)
    assert total_steps(10, _cfg(max_steps=5)) == (3, 5)
    for epoch in range(3):
        idx = [i for s in range(epoch * 3, epoch * 3 + 3) for i in batch_indices(s, 10, per_epoch, cfg)]
        assert sorted(idx) == list(range(10))
    assert batch_indices(0, 10, 3, cfg) != batch_indices(3, 10, 3, cfg)  # a new order each epoch
    assert batch_indices(4, 10, 3, cfg) == batch_indices(4, 10, 3, _cfg())


def _run(out, cfg, stop_at: int | None = None):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    stop = threading.Event()

    def step_fn(step, idx):
        if step == stop_at:
            stop.set()
        loss = (model(X[idx]).squeeze(-1) - Y[idx]).pow(2).mean()
        return StepOutput(loss, len(idx), {"note": f"step {step}"})

    done = train_loop(cfg, n_examples=10, optimizer=opt, step_fn=step_fn,
                      trainable=lambda: dict(model.state_dict()),
                      restore=lambda t: model.load_state_dict(t), checkpoints=out, label="train test",
                      what="test training", stop_event=stop, progress=False)
    return done, model


def test_a_stopped_run_resumes_to_the_same_losses_and_weights(tmp_path):
    cfg = _cfg(epochs=10, checkpoint_every=4)
    straight, m1 = _run(tmp_path / "straight", cfg)
    assert straight.step == 30 and len(straight.losses) == 30
    assert sum(straight.losses[-3:]) < 0.5 * sum(straight.losses[:3])
    with pytest.raises(SearchCancelled, match="test training stopped"):
        _run(tmp_path / "stopped", cfg, stop_at=9)  # set during step 9: checked before the next
    kept = sorted(p.name for p in (tmp_path / "stopped").glob("step-*"))
    assert kept == ["step-00000004", "step-00000008"]
    resumed, m2 = _run(tmp_path / "stopped", cfg)  # from step 8: steps 8 and 9 run again
    assert resumed.step == 30 and resumed.losses == straight.losses
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)
    state = json.loads((tmp_path / "stopped" / "step-00000030" / "trainer_state.json").read_text())
    assert state["step"] == 30 and state["losses"] == straight.losses and state["note"] == "step 29"
