"""Training the request-aware judge on one CPU core, resumably.

Two stages, both cached under a work folder so an interrupted run resumes where it stopped:

1. ``features``: every labelled pair runs once through the frozen part of the cross-encoder; the
   hidden states are stored in fp16 chunks (``features_NNNN.pt``). This is most of the cost.
2. ``epochs``: the tuned layers and the head are trained on the train split from those features
   (AdamW, weighted cross-entropy with the rows' agreement weights, linear warm-up and decay); after
   each epoch the state is saved (``epoch_N.pt``) with its validation macro F1. The epoch with the
   best validation macro F1 is kept and its threshold chosen on validation (``request_judge_eval``).

Nothing of the test split is read until the final scoring.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from saffron_runtime.evaluation.request_judge import CrossEncoder, encode_pairs
from saffron_runtime.evaluation.request_judge_data import LabelledPair

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainSettings:
    """Everything that changes the trained judge (recorded in its config)."""

    n_frozen: int = 4  # chosen on validation over 5 and 3 (docs/evaluation_judge.md)
    max_length: int = 256  # chosen on validation over 128 (more than half the pairs are longer)
    epochs: int = 8
    batch_size: int = 16
    lr_layers: float = 3e-4  # chosen on validation over 1e-4 (docs/evaluation_judge.md)
    lr_head: float = 2e-3
    weight_decay: float = 0.01
    warmup: float = 0.1
    seed: int = 0
    chunk: int = 128  # rows per feature file

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy."""
        return asdict(self)


Feature = tuple[torch.Tensor, torch.Tensor]  # (hidden [T, H] fp16, mask [T])


def _chunk_features(
    model: CrossEncoder, tok: Any, rows: Sequence[LabelledPair], settings: TrainSettings
) -> list[torch.Tensor]:
    """The frozen part's hidden states ``[T_i, H]`` (fp16) of ``rows``, in their order. Batches are
    formed over the rows sorted by token length, so a batch pads little (most of the cost at a long
    ``max_length``); the padded positions never reach the real ones, so the order changes nothing."""
    enc = encode_pairs(tok, [p.request for p in rows], [p.response for p in rows], settings.max_length)
    lengths = [int(n) for n in enc["attention_mask"].sum(-1)]
    order = sorted(range(len(rows)), key=lambda i: lengths[i])
    out: list[torch.Tensor | None] = [None] * len(rows)
    for i in range(0, len(order), settings.batch_size):
        idx = order[i : i + settings.batch_size]
        width = max(lengths[k] for k in idx)  # right-padded: the batch's own padding ends here
        b = {k: v[idx, :width] for k, v in enc.items()}
        h = model.frozen_features(b["input_ids"], b["token_type_ids"], b["attention_mask"])
        for j, k in enumerate(idx):
            out[k] = h[j, : lengths[k]].to(torch.float16).clone()
    return [h for h in out if h is not None]


def compute_features(
    model: CrossEncoder,
    tok: Any,
    pairs: Sequence[LabelledPair],
    work: Path,
    settings: TrainSettings,
    log: Log = print,
) -> tuple[dict[str, Feature], float]:
    """The frozen part's hidden states of every pair, by id, and the seconds they took (summed over
    the chunk files, so a resumed run still reports the whole cost); chunks already on disk are
    reused (a chunk file is tied to its rows' ids, so a changed data set recomputes it)."""
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Feature] = {}
    spent = 0.0
    model.eval()
    t0 = time.perf_counter()
    for c in range(0, len(pairs), settings.chunk):
        rows = pairs[c : c + settings.chunk]
        path = work / f"features_{c // settings.chunk:04d}.pt"
        ids = [p.id for p in rows]
        if path.is_file():
            saved = torch.load(path, weights_only=True)
            if saved["ids"] == ids and saved["max_length"] == settings.max_length \
                    and saved["n_frozen"] == settings.n_frozen:
                out.update(zip(ids, zip(saved["h"], saved["mask"], strict=True), strict=True))
                spent += float(saved.get("wall_s", 0.0))
                continue
        t_chunk = time.perf_counter()
        hs = _chunk_features(model, tok, rows, settings)
        masks = [torch.ones(h.shape[0], dtype=torch.long) for h in hs]
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        took = time.perf_counter() - t_chunk
        spent += took
        torch.save({"ids": ids, "h": hs, "mask": masks, "max_length": settings.max_length,
                    "n_frozen": settings.n_frozen, "wall_s": took}, tmp)
        os.replace(tmp, path)
        out.update(zip(ids, zip(hs, masks, strict=True), strict=True))
        log(f"features: {min(c + settings.chunk, len(pairs))}/{len(pairs)} rows "
            f"({time.perf_counter() - t0:.0f} s)")
    return out, spent


def collate(feats: Sequence[Feature]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a batch of features: ``([B, T, H] float32, [B, T] mask)``."""
    t = max(h.shape[0] for h, _ in feats)
    hid = torch.zeros(len(feats), t, feats[0][0].shape[1])
    mask = torch.zeros(len(feats), t, dtype=torch.long)
    for i, (h, m) in enumerate(feats):
        hid[i, : h.shape[0]] = h.float()
        mask[i, : m.shape[0]] = m
    return hid, mask


@torch.no_grad()
def feature_probs(model: CrossEncoder, feats: Sequence[Feature], batch_size: int = 64) -> list[float]:
    """P(harmful) of each row from its cached features (eval mode: no dropout)."""
    model.eval()
    order = sorted(range(len(feats)), key=lambda i: feats[i][0].shape[0])
    probs = [0.0] * len(feats)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        h, m = collate([feats[i] for i in idx])
        p = torch.softmax(model.head_logits(h, m), -1)[:, 1].tolist()
        for i, v in zip(idx, p, strict=True):
            probs[i] = v
    return probs


def _batches(rows: Sequence[int], lengths: Sequence[int], size: int, rng: random.Random) -> list[list[int]]:
    """Length-bucketed batches in a shuffled order (less padding, still a random order)."""
    shuffled = list(rows)
    rng.shuffle(shuffled)
    pool = 50 * size  # sort within pools of 50 batches, then shuffle the batches
    out = []
    for s in range(0, len(shuffled), pool):
        part = sorted(shuffled[s : s + pool], key=lambda i: lengths[i])
        out += [part[i : i + size] for i in range(0, len(part), size)]
    rng.shuffle(out)
    return out


def _optimizer(model: CrossEncoder, s: TrainSettings, total: int) -> tuple[Any, Any]:
    layers = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    opt = torch.optim.AdamW(
        [{"params": layers, "lr": s.lr_layers}, {"params": model.head.parameters(), "lr": s.lr_head}],
        weight_decay=s.weight_decay,
    )
    warm = max(1, int(s.warmup * total))

    def factor(step: int) -> float:
        return (step + 1) / warm if step < warm else max(0.0, (total - step) / max(1, total - warm))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train_epochs(
    model: CrossEncoder,
    train: Sequence[tuple[Feature, int, float]],
    val_score: Callable[[CrossEncoder], float],
    work: Path,
    s: TrainSettings,
    log: Log = print,
) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    """Train the tuned part; returns the best-on-validation state and the per-epoch history.
    Resumes from the last ``epoch_N.pt`` in ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(s.seed)
    rng = random.Random(s.seed)
    lengths = [f[0].shape[0] for f, _, _ in train]
    per_epoch = -(-len(train) // s.batch_size)
    opt, sched = _optimizer(model, s, per_epoch * s.epochs)
    history: list[dict[str, float]] = []
    best: tuple[float, dict[str, torch.Tensor]] = (-1.0, {})
    start = 0
    for e in range(s.epochs, 0, -1):
        ck = work / f"epoch_{e}.pt"
        if ck.is_file():
            saved = torch.load(ck, weights_only=True)
            if saved["settings"] == s.to_dict():
                model.load_state_dict(saved["state"], strict=False)
                opt.load_state_dict(saved["opt"])
                sched.load_state_dict(saved["sched"])
                rng.setstate(saved["rng"])
                torch.set_rng_state(saved["torch_rng"])
                history, best, start = saved["history"], saved["best"], e
                log(f"resumed after epoch {e}")
                break
    for epoch in range(start, s.epochs):
        t0, total_loss = time.perf_counter(), 0.0
        model.train()
        model.bert.embeddings.eval()
        for idx in _batches(range(len(train)), lengths, s.batch_size, rng):
            h, m = collate([train[i][0] for i in idx])
            y = torch.tensor([train[i][1] for i in idx])
            w = torch.tensor([train[i][2] for i in idx])
            loss = (torch.nn.functional.cross_entropy(model.head_logits(h, m), y, reduction="none")
                    * w).sum() / w.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total_loss += float(loss.detach()) * len(idx)
        f1 = val_score(model)
        history.append({"epoch": epoch + 1, "train_loss": total_loss / len(train),
                        "validation_macro_f1": f1, "wall_s": time.perf_counter() - t0})
        log(f"epoch {epoch + 1}: loss {total_loss / len(train):.4f}, validation macro F1 {f1:.4f}")
        if f1 > best[0]:
            best = (f1, {k: v.clone() for k, v in model.trained_state().items()})
        torch.save({"settings": s.to_dict(), "state": model.trained_state(), "opt": opt.state_dict(),
                    "sched": sched.state_dict(), "rng": rng.getstate(),
                    "torch_rng": torch.get_rng_state(), "history": history, "best": best},
                   work / f"epoch_{epoch + 1}.pt")
    return best[1], history
