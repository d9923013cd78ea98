"""Labelled safety data from the public sets vendored in ``data/``, split by prompt (never by response).

Labels follow the data card: a response is harmful (1) when it complies with an unsafe prompt (XSTest
unsafe + ``1_full_compliance``), achieves a harmful objective (PyRIT ``objective_achieved = 1``) or is
rated harmful (PyRIT mean harm score >= 0.5); benign (0) for any refusal, any answer to a safe prompt,
``objective_achieved = 0`` or a mean harm score of 0. Ambiguous ratings (0 < score < 0.5) are dropped.

Token labels are derived by a documented rule (no set here has token-level labels): the response is
harmful from character ``harm_start`` on (see :func:`harm_start`), and a token is harmful when its text
ends after that offset. Storing a character offset keeps the labels independent of the tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from saffron_runtime.errors import DataError

Split = Literal["train", "val", "test"]
TokenRule = Literal["all", "after-first-sentence"]
SPLIT_FRACTIONS: dict[str, float] = {"train": 0.7, "val": 0.1, "test": 0.2}
_SENTENCE_END = re.compile(r"[.!?:](\s|$)|\n")


class MonitorExample(BaseModel):
    """A labelled (prompt, response) pair; ``harm_start`` is the char offset where harm begins (or None)."""

    id: str
    prompt: str
    response: str
    label: int = Field(ge=0, le=1)
    source: str
    harm_start: int | None = None


class PromptExample(BaseModel):
    """A labelled request for the prompt head (1 = harmful request)."""

    id: str
    prompt: str
    label: int = Field(ge=0, le=1)
    source: str


def split_of(prompt: str) -> Split:
    """Deterministic split of a prompt (70/10/20) by a hash of its normalised text."""
    key = " ".join(prompt.lower().split()).encode()
    bucket = int(hashlib.sha256(key).hexdigest()[:8], 16) % 100
    if bucket < 70:
        return "train"
    return "val" if bucket < 80 else "test"


def harm_start(response: str, label: int, rule: TokenRule = "after-first-sentence") -> int | None:
    """Where a harmful response starts being harmful, by ``rule``; None for benign responses.

    ``all``: from the first character. ``after-first-sentence``: from the end of the first sentence
    when there is more text after it (the opener is often an acknowledgement such as "Sure, here is"),
    else from the first character.
    """
    if label == 0:
        return None
    if rule == "all":
        return 0
    m = _SENTENCE_END.search(response)
    if m is None or not response[m.end() :].strip():
        return 0
    return m.end()


def token_labels(offsets: list[tuple[int, int]], start: int | None) -> list[int]:
    """Per-token labels from character offsets: 1 when a token's text ends after ``start``."""
    if start is None:
        return [0] * len(offsets)
    return [int(end > start) for _, end in offsets]


def _rows(path: Path) -> Iterator[dict]:
    if not path.is_file():
        raise DataError(
            f"data file {path} does not exist; pass the shared data folder (--data-dir)"
        )
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from e


def monitor_examples(
    data_dir: str | Path, rule: TokenRule = "after-first-sentence"
) -> list[MonitorExample]:
    """Every labelled response of XSTest and PyRIT, with derived token-label offsets."""
    d = Path(data_dir)
    out: list[MonitorExample] = []

    def add(id_: str, prompt: str, response: str, label: int, source: str) -> None:
        if response.strip():
            out.append(
                MonitorExample(
                    id=id_,
                    prompt=prompt,
                    response=response,
                    label=label,
                    source=source,
                    harm_start=harm_start(response, label, rule),
                )
            )

    for r in _rows(d / "xstest" / "completions.jsonl"):
        harmful = r["prompt_label"] == "unsafe" and r["final_label"] == "1_full_compliance"
        add(r["id"], r["prompt"], r["response"], int(harmful), "xstest")
    for r in _rows(d / "responses" / "pyrit_objective_achieved.jsonl"):
        add(r["id"], r["prompt"], r["response"], int(r["objective_achieved"]), "pyrit-objective")
    for r in _rows(d / "responses" / "pyrit_harm_likert.jsonl"):
        score = sum(r["harm_scores"]) / len(r["harm_scores"])
        if score >= 0.5 or score == 0.0:
            add(r["id"], r["prompt"], r["response"], int(score >= 0.5), "pyrit-harm")
    for r in _rows(d / "responses" / "pyrit_refusal.jsonl"):
        if r["refusal"] == 1:
            add(r["id"], r["prompt"], r["response"], 0, "pyrit-refusal")
    return out


def prompt_examples(data_dir: str | Path) -> list[PromptExample]:
    """Harmful requests (AdvBench, Do-Not-Answer, XSTest unsafe) and benign ones (FreshQA, XSTest safe)."""
    d = Path(data_dir)
    out = [
        PromptExample(id=r["id"], prompt=r["prompt"], label=1, source="advbench")
        for r in _rows(d / "prompts" / "advbench.jsonl")
    ]
    out += [
        PromptExample(id=r["id"], prompt=r["prompt"], label=1, source="donotanswer")
        for r in _rows(d / "prompts" / "donotanswer.jsonl")
    ]
    out += [
        PromptExample(id=r["id"], prompt=r["prompt"], label=0, source="freshqa")
        for r in _rows(d / "prompts" / "freshqa_benign.jsonl")
    ]
    out += [
        PromptExample(
            id=r["id"], prompt=r["prompt"], label=int(r["label"] == "unsafe"), source="xstest"
        )
        for r in _rows(d / "xstest" / "prompts.jsonl")
    ]
    return out


def by_split(examples: list[MonitorExample] | list[PromptExample]) -> dict[str, list]:
    """Group examples by the split of their prompt."""
    groups: dict[str, list] = {s: [] for s in SPLIT_FRACTIONS}
    for ex in examples:
        groups[split_of(ex.prompt)].append(ex)
    return groups


def split_ids(groups: dict[str, list]) -> dict[str, list[str]]:
    """The ids in each split, sorted, for recording next to trained models."""
    return {s: sorted(ex.id for ex in exs) for s, exs in groups.items()}


def write_splits(
    data_dir: str | Path, out_dir: str | Path, rule: TokenRule = "after-first-sentence"
) -> dict[str, int]:
    """Write monitor and prompt-head JSONL files per split plus ``split_ids.json``; return row counts."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    groups = by_split(monitor_examples(data_dir, rule))
    pgroups = by_split(prompt_examples(data_dir))
    for split in SPLIT_FRACTIONS:
        for name, rows in (
            (f"monitor_{split}", groups[split]),
            (f"prompts_{split}", pgroups[split]),
        ):
            with (out / f"{name}.jsonl").open("w", encoding="utf-8") as f:
                for r in rows:
                    f.write(json.dumps(r.model_dump(), ensure_ascii=False) + "\n")
            counts[name] = len(rows)
    ids = {
        "monitor": split_ids(groups),
        "prompts": split_ids(pgroups),
        "rule": "sha256 of the lower-cased, whitespace-normalised prompt; 70/10/20 train/val/test",
    }
    (out / "split_ids.json").write_text(json.dumps(ids, indent=1) + "\n")
    return counts
