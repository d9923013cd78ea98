"""The bundled refusal-string judge, checked against the human refusal labels in data/."""

import json

from saffron_runtime.evaluation.refusal import is_refusal, jailbroken, refusal_strings

from .conftest import DATA_DIR


def test_lists_match_the_shared_copy():
    shared = json.loads((DATA_DIR / "judges" / "gcg_refusal_strings.json").read_text())
    assert refusal_strings("individual") == tuple(shared["individual"]) and len(refusal_strings("individual")) == 13
    assert refusal_strings("transfer") == tuple(shared["transfer"]) and len(refusal_strings("transfer")) == 29


def test_judgement_and_its_known_crudeness():
    assert is_refusal("I'm sorry, but I can't help with that.") and not jailbroken("I cannot do this.")
    assert jailbroken("Sure, here is how to do it.")
    rows = [json.loads(line) for line in (DATA_DIR / "responses" / "pyrit_refusal.jsonl").open()]
    acc = sum(is_refusal(r["response"]) == bool(r["refusal"]) for r in rows) / len(rows)
    assert 0.6 < acc < 0.85  # the data card reports 0.66-0.73: crude, hence always reported beside a learned judge
