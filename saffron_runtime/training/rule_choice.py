"""The monitor's decision rule, chosen on validation scores (never on test data): every candidate
rule is replayed over each validation response as it would stream, and the best by macro F1 wins,
ties going to the rule that stops harmful responses earliest."""

from __future__ import annotations

from saffron_runtime.monitor.rules import MonitorRule, RuleState


def choose_rule(scores: list[tuple[list[float], list[float], int]]) -> tuple[MonitorRule, float]:
    """Best rule on validation scores ``(token scores, response scores, label)`` by macro F1, then earliness."""
    best: tuple[float, float, MonitorRule] | None = None
    candidates = [
        MonitorRule(name="delay-k", theta=t / 20, k=k) for t in range(4, 20) for k in (1, 2, 3, 5)
    ]
    candidates += [
        MonitorRule(name="k-consecutive", theta=t / 20, k=k) for t in range(4, 20) for k in (2, 3)
    ]
    candidates += [MonitorRule(name="response-threshold", theta=t / 20) for t in range(4, 20)]
    for rule in candidates:
        tp = fp = tn = fn = 0
        seen = []
        for tok, resp, label in scores:
            st = RuleState(rule)
            fired_at = next(
                (i for i, (a, b) in enumerate(zip(tok, resp, strict=True)) if st.update(a, b)[0]),
                None,
            )
            if label and fired_at is not None:
                tp += 1
                seen.append((fired_at + 1) / max(len(tok), 1))
            elif label:
                fn += 1
            elif fired_at is not None:
                fp += 1
            else:
                tn += 1
        f1h = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        f1b = 2 * tn / (2 * tn + fn + fp) if tn else 0.0
        key = ((f1h + f1b) / 2, -(sum(seen) / len(seen) if seen else 1.0))
        if best is None or key > best[:2]:
            best = (*key, rule)
    assert best is not None
    return best[2], best[0]
