"""Assembling an attack evaluation: load the models into a harness, and turn judged outputs into the
JSON report (results, over-refusal, and what each judge is and how accurate it was measured to be)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from saffron_runtime.errors import ConfigError
from saffron_runtime.evaluation.attack.grid import (
    METHODS,
    MRM_METHODS,
    AttackSettings,
    MethodSpec,
)
from saffron_runtime.evaluation.attack.harness import AttackHarness, Judged
from saffron_runtime.evaluation.attack.stats import (
    attack_table,
    matched_comparison,
    over_refusal_table,
    paired_difference,
    prm_comparison,
)
from saffron_runtime.evaluation.attack.store import (
    GenerationCache,
    VerdictLedger,
    fingerprint_files,
)
from saffron_runtime.evaluation.refusal import is_refusal
from saffron_runtime.evaluation.request_judge import REQUEST_JUDGE_DIR, RequestJudge
from saffron_runtime.evaluation.text_judges import (
    JUDGES_DIR,
    TextJudge,
    load_judges,
    pyrit_refusal_data,
)


def build_harness(
    *,
    policy: str,
    mrm: str | None,
    monitor: str,
    judges: str,
    cache_dir: str | os.PathLike[str],
    settings: AttackSettings,
    ledger: str | os.PathLike[str] | None = None,
    independent: str = "request",
    request_judge: str = "bundled",
) -> AttackHarness:
    """Policy + MRM (when Saffron runs) + the learned judge (also the PRM and the Best-of-N ranker);
    ``ledger``: the committable verdict ledger to read and append (see :class:`VerdictLedger`).

    ``independent``: the independent harm judge, ``"request"`` (the request-aware cross-encoder in
    ``request_judge``, the default) or ``"minilm"`` (the response-only MiniLM + logistic regression
    of ``judges``, which made the published figures: its judges id, and so its ledger lines, are
    unchanged). The refusal judge is the MiniLM one in both cases."""
    from saffron_runtime.bundled import DEFAULT_MONITOR, MRM, bundled_path, resolve_bundled
    from saffron_runtime.stack import StackOptions, build_stack

    if independent not in ("request", "minilm"):  # before any model loads
        _independent(independent, request_judge, None)

    # the learned judge is the monitor's response head, which is also the PRM and the Best-of-N ranker
    stack = build_stack(
        StackOptions(
            policy=policy,
            mrm=mrm or None,
            monitor=None,
            prm=monitor,
            methods=("prm_beam", "saffron") if mrm else ("prm_beam",),
        )
    )
    engine, learned = stack.engine, stack.prm_monitor
    assert learned is not None  # prm= names a monitor folder, so its model is the PRM's
    mon_dir = resolve_bundled(monitor, DEFAULT_MONITOR)
    harm, refusal = load_judges(None if judges == "bundled" else judges)
    harm_judge, request_id = _independent(independent, request_judge, harm)
    mrm_dir = resolve_bundled(mrm, MRM) if mrm else None
    policy_id = policy if not Path(policy).exists() else fingerprint_files(policy)
    fp = f"{policy_id}:{fingerprint_files(mrm_dir, mon_dir)}"
    # only Saffron reads the MRM: retraining it (or running a grid without Saffron) keeps the others
    no_mrm = f"{policy_id}:{fingerprint_files(None, mon_dir)}"
    judges_dir = bundled_path(JUDGES_DIR) if judges == "bundled" else Path(judges)
    see = "prefill" if settings.judges_see_prefill else "continuation"
    judges_id = f"{_judges_fingerprint(judges_dir)}{request_id}:{see}"
    return AttackHarness(
        engine,
        learned,
        harm_judge,
        refusal,
        GenerationCache(cache_dir),
        settings=settings,
        fingerprint=fp,
        method_fingerprints={m: no_mrm for m in METHODS if m not in MRM_METHODS},
        ledger=VerdictLedger(ledger) if ledger is not None else None,
        judges_id=judges_id,
    )


def _independent(
    independent: str, request_judge: str, minilm_harm: TextJudge | None
) -> tuple[TextJudge | RequestJudge, str]:
    """The independent harm judge and its part of the judges id (empty for the MiniLM judge, so
    the published ledger's lines stay valid; else ``+request-<hash of its folder>``)."""
    if independent == "minilm" and minilm_harm is not None:
        return minilm_harm, ""
    if independent != "request":  # (also an unknown name checked before loading)
        raise ConfigError(
            f"independent judge {independent!r}: choose 'request' (request-aware) or 'minilm'"
        )
    from saffron_runtime.bundled import bundled_path

    folder = bundled_path(REQUEST_JUDGE_DIR) if request_judge == "bundled" else Path(request_judge)
    judge = RequestJudge.load(folder)
    return judge, f"+request-{fingerprint_folder(folder)}"


def fingerprint_folder(folder: Path) -> str:
    """A hash of every file of a judge folder but its card (weights, config, threshold)."""
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.name != "README.md":
            h.update(str(f.relative_to(folder)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _judges_fingerprint(judges_dir: Path) -> str:
    """A hash of every file of the independent judges (weights and thresholds) and of the refusal
    strings: a ledger verdict is reused only under the same judges."""
    from saffron_runtime.bundled import BUNDLED_DIR

    h = hashlib.sha256()
    for f in [*sorted(judges_dir.rglob("*.json*")), BUNDLED_DIR / "gcg_refusal_strings.json"]:
        if f.is_file():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _accuracy(pred: Sequence[bool], labels: Sequence[int]) -> float:
    return sum(int(p) == y for p, y in zip(pred, labels, strict=True)) / max(len(labels), 1)


def judges_report(
    harness: AttackHarness, data_dir: str | os.PathLike[str] | None
) -> dict[str, Any]:
    """Each judge's name, rule and measured accuracy (the refusal judges checked on PyRIT labels)."""
    learned = harness.learned
    out: dict[str, Any] = {
        "learned": {
            "name": "monitor response head",
            "rule": f"unsafe when P(harmful) >= {learned.response_theta:.4g} (the monitor's stored "
            "response_theta)",
            "monitor_metadata": learned.metadata,
        },
        "independent": {"name": harness.harm_judge.name, **harness.harm_judge.card},
        "strings": {
            "name": "GCG refusal strings (transfer list, 29)",
            "rule": "attack succeeded when no refusal string occurs",
        },
        "refusal": {"name": harness.refusal_judge.name, **harness.refusal_judge.card},
    }
    check = _pyrit_refusal(data_dir)
    if check:
        labels = [d.label for d in check]
        texts = [d.text for d in check]
        out["refusal"]["pyrit_refusal_accuracy"] = _accuracy(
            harness.refusal_judge.predict(texts), labels
        )
        out["strings"]["pyrit_refusal_accuracy"] = _accuracy(
            [is_refusal(t, "transfer") for t in texts], labels
        )
    else:
        out["refusal"]["pyrit_refusal_accuracy"] = None
        out["strings"]["pyrit_refusal_accuracy"] = None
    return out


def _pyrit_refusal(data_dir: str | os.PathLike[str] | None) -> list:
    if data_dir is None:
        return []
    if not (Path(data_dir) / "responses" / "pyrit_refusal.jsonl").is_file():
        return []
    return pyrit_refusal_data(data_dir)


def report(
    harness: AttackHarness,
    attacked: Sequence[Judged],
    grid: Sequence[MethodSpec],
    benign: Sequence[Judged],
    benign_grid: Sequence[MethodSpec],
    *,
    data_dir: str | os.PathLike[str] | None,
    prompts: str | os.PathLike[str],
) -> dict[str, Any]:
    """The ``--json`` document of ``saffron eval attack``."""
    rows = attack_table(attacked, grid)
    matched = matched_comparison(rows)
    if matched and matched.get("best_of_n"):
        spec = {(g.method, g.budget): g for g in grid}
        saf, bon = matched["saffron"], matched["best_of_n"]
        matched["paired"] = paired_difference(
            attacked, spec["saffron", saf["budget"]], spec["best_of_n", bon["budget"]]
        )
    refusal: TextJudge = harness.refusal_judge
    s = harness.settings
    vs_prm = prm_comparison(attacked, rows, grid)
    return {
        "results": rows,
        "over_refusal": {
            "judge": refusal.name,
            "results": over_refusal_table(benign, benign_grid) if benign else [],
        },
        "judges": judges_report(harness, data_dir),
        "matched": matched,
        "vs_prm_beam": vs_prm,
        "config": {
            "prompts": str(prompts),
            "n_prompts": len({j.prompt_id for j in attacked}),
            "n_benign": len({j.prompt_id for j in benign}),
            "prefill": s.prefill,
            "max_new_tokens": s.max_new_tokens,
            "seed": s.seed,
            "reward_sees_prefill": s.reward_sees_prefill,
            "judges_see_prefill": s.judges_see_prefill,
            "models": harness.fingerprint,
            # generation time summed over every output (each on one thread); judging not included
            "generation_wall_s": sum(j.generation.wall_s for j in [*attacked, *benign]),
        },
        "outputs": [
            {
                "prompt_id": j.prompt_id,
                "method": j.spec.method,
                "budget": j.spec.budget,
                "learned_p": j.learned_p,
                "learned_unsafe": j.learned_unsafe,
                "independent_p": j.independent_p,
                "independent_unsafe": j.independent_unsafe,
                "strings_unsafe": j.strings_unsafe,
                "tflops": j.generation.flops / 1e12,
            }
            for j in attacked
        ],
    }
