"""The resumable training loop the MRM and monitor trainers share.

Epochs of seeded shuffles (epoch ``e`` draws its order from ``seed + e``), so the batch at any step
follows from the step number alone and a run resumed from a checkpoint takes the same batches as an
uninterrupted one. Every ``checkpoint_every`` steps (and at the last) the trainable tensors, the
optimizer and the losses so far are written through :mod:`saffron_runtime.training.checkpoint`;
on start the newest complete checkpoint is loaded back. A trainer supplies only its model-specific
step: the batch of the given example indices and its loss.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from saffron_runtime.cancel import raise_if_stopped
from saffron_runtime.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint


class LoopSettings(Protocol):
    """The fields of a trainer's settings that the loop reads."""

    epochs: int
    batch_size: int
    seed: int
    checkpoint_every: int
    max_steps: int | None


@dataclass
class StepOutput:
    """What one training step hands back to the loop.

    ``loss``: the scalar to back-propagate; ``tokens``: how many tokens the step processed (for the
    tokens-per-second column); ``state``: extra JSON-ready entries for the checkpoint's trainer state.
    """

    loss: torch.Tensor
    tokens: int
    state: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoopResult:
    """Where the loop stopped: the step count and every recorded loss (resumed ones included)."""

    step: int
    losses: list[float]


StepFn = Callable[[int, list[int]], StepOutput]
"""``step_fn(step, example_indices)``: forward and loss of one batch (no backward, no update)."""


def total_steps(n_examples: int, cfg: LoopSettings) -> tuple[int, int]:
    """(steps per epoch, total steps): every epoch covers every example, capped by ``max_steps``."""
    per_epoch = (n_examples + cfg.batch_size - 1) // cfg.batch_size
    total = per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    return per_epoch, total


def batch_indices(step: int, n_examples: int, per_epoch: int, cfg: LoopSettings) -> list[int]:
    """The example indices of ``step``: a slice of the epoch's seeded permutation."""
    epoch, i = divmod(step, per_epoch)
    order = torch.randperm(n_examples, generator=torch.Generator().manual_seed(cfg.seed + epoch))
    return order[i * cfg.batch_size : (i + 1) * cfg.batch_size].tolist()


def progress_columns(label: str) -> tuple[Any, ...]:
    """The progress bar of a training run: label, bar, steps, elapsed, recorded loss and tok/s."""
    return (
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  {task.fields[tps]:.0f} tok/s"),
    )


def train_loop(
    cfg: LoopSettings,
    *,
    n_examples: int,
    optimizer: torch.optim.Optimizer,
    step_fn: StepFn,
    trainable: Callable[[], dict[str, torch.Tensor]],
    restore: Callable[[dict[str, torch.Tensor]], None],
    checkpoints: Path,
    label: str,
    what: str,
    stop_event: object | None = None,
    progress: bool = True,
) -> LoopResult:
    """Run (or resume) training to the last step; ``label`` heads the progress bar and ``what``
    names the run when ``stop_event`` stops it.

    ``trainable()`` gives the tensors a checkpoint holds and ``restore(tensors)`` loads them back.
    The trainer state saved is ``{"step", "losses", **StepOutput.state}`` of the step written.
    """
    per_epoch, total = total_steps(n_examples, cfg)
    step, losses = 0, []
    last = latest_checkpoint(checkpoints)
    if last is not None:
        tensors, state = load_checkpoint(last, optimizer)
        restore(tensors)
        step, losses = int(state["step"]), list(state["losses"])
    tokens_seen, t0 = 0, time.perf_counter()
    with Progress(*progress_columns(label), disable=not progress) as bar:
        task = bar.add_task("train", total=total, completed=step, loss=float("nan"), tps=0.0)
        while step < total:
            idx = batch_indices(step, n_examples, per_epoch, cfg)
            raise_if_stopped(stop_event, what)  # type: ignore[arg-type]
            out = step_fn(step, idx)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            step += 1
            losses.append(out.loss.item())  # the recorded value, not the live tensor
            tokens_seen += out.tokens
            tps = tokens_seen / max(time.perf_counter() - t0, 1e-9)
            bar.update(task, advance=1, loss=losses[-1], tps=tps)
            if step % cfg.checkpoint_every == 0 or step == total:
                save_checkpoint(
                    checkpoints, step, trainable(), optimizer, {"losses": losses, **out.state}
                )
    return LoopResult(step=step, losses=losses)
