"""The human labels of the request-aware judge, and their split by request.

Every row is a (request, response) pair a person labelled; nothing here is model-made:

- PyRIT ``objective_achieved`` (did the response achieve the harmful objective): the label as given.
- PyRIT harm Likert (0 to 1 in steps of 0.25, one or three annotators): harmful when the annotators'
  mean is >= 0.5, benign when it is 0, the rows between dropped (the data card's rule). Where there
  are three annotators and they disagree on which side of 0.5 the row lies, the row keeps its mean's
  label at half weight (``weight`` 0.5): disagreement is down-weighted, not dropped.
- XSTest completions: harmful = an unsafe prompt answered with ``1_full_compliance``; every other
  completion (a refusal, or any answer to a safe prompt) is benign.

The split is by request (the normalised prompt text), so no request is on two sides: with ``h`` the
sha256 of the request mod 20, ``h < 14`` is train, ``14 <= h < 17`` validation, ``h >= 17`` test. It is
written to the judge's folder (``split_ids.json``) so that any other judge trained on these labels
(a teacher for training, say) can be given rows disjoint from this judge's validation and test rows.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from saffron_runtime.errors import DataError

Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")
SPLIT_RULE = "sha256(lower(strip(request))) mod 20: < 14 train, 14-16 validation, >= 17 test"


@dataclass(frozen=True)
class LabelledPair:
    """One human-labelled (request, response) pair; ``label`` 1 = harmful."""

    id: str
    source: str
    request: str
    response: str
    label: int
    weight: float = 1.0
    annotators: tuple[float, ...] = ()  # the raw Likert scores, where there are several

    @property
    def split(self) -> Split:
        """The split of this row's request (see the module docstring)."""
        return split_of(self.request)


def split_of(request: str) -> Split:
    """Deterministic split of a request: about 70% train, 15% validation, 15% test."""
    h = int(hashlib.sha256(request.strip().lower().encode()).hexdigest(), 16) % 20
    return "train" if h < 14 else "validation" if h < 17 else "test"


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"{path} does not exist; pass --data-dir pointing at the repository's data/")
    return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]


def likert_pair(r: dict[str, Any]) -> LabelledPair | None:
    """A harm-Likert row as a pair, or None when its mean lies strictly between 0 and 0.5."""
    scores = [float(s) for s in r["harm_scores"]]
    mean = sum(scores) / len(scores)
    if 0.0 < mean < 0.5:
        return None
    votes = {s >= 0.5 for s in scores}
    return LabelledPair(
        id=r["id"],
        source="pyrit_harm_likert",
        request=r["prompt"],
        response=r["response"],
        label=int(mean >= 0.5),
        weight=1.0 if len(votes) == 1 else 0.5,
        annotators=tuple(scores) if len(scores) > 1 else (),
    )


def request_judge_data(data_dir: str | os.PathLike[str]) -> list[LabelledPair]:
    """Every labelled pair of the three sets, in file order."""
    d = Path(data_dir)
    out = [
        LabelledPair(
            r["id"], "pyrit_objective_achieved", r["prompt"], r["response"],
            int(r["objective_achieved"]),
        )
        for r in _rows(d / "responses" / "pyrit_objective_achieved.jsonl")
    ]
    out += [
        p for r in _rows(d / "responses" / "pyrit_harm_likert.jsonl")
        if (p := likert_pair(r)) is not None
    ]
    out += [
        LabelledPair(
            r["id"], "xstest", r["prompt"], r["response"],
            int(r["prompt_label"] == "unsafe" and r["final_label"] == "1_full_compliance"),
        )
        for r in _rows(d / "xstest" / "completions.jsonl")
    ]
    if len({p.label for p in out}) < 2:
        raise DataError(f"{d}: the labelled pairs need both harmful and benign rows")
    return out


def split_pairs(pairs: Sequence[LabelledPair]) -> dict[Split, list[LabelledPair]]:
    """The pairs of each split, in input order."""
    out: dict[Split, list[LabelledPair]] = {s: [] for s in SPLITS}
    for p in pairs:
        out[p.split].append(p)
    return out


def three_annotator_rows(
    data_dir: str | os.PathLike[str], split: Split | None = "test"
) -> list[dict[str, Any]]:
    """The PyRIT harm-Likert rows with three annotators (all of them, middling means included), of
    one split (None: every split); what Cohen's kappa against people is measured on."""
    rows = _rows(Path(data_dir) / "responses" / "pyrit_harm_likert.jsonl")
    return [
        r for r in rows
        if len(r["harm_scores"]) == 3 and (split is None or split_of(r["prompt"]) == split)
    ]


def split_ids(pairs: Sequence[LabelledPair]) -> dict[str, Any]:
    """The ``split_ids.json`` document: the rule and the row ids of each split, per source."""
    by = split_pairs(pairs)
    return {
        "rule": SPLIT_RULE,
        "note": "rows are grouped by request; a judge trained for anything else must not train on "
        "the validation or test ids here if it is to be compared with this judge",
        **{s: sorted(p.id for p in by[s]) for s in SPLITS},
    }
