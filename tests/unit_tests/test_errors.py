"""The shared violation vocabulary and verdicts."""

import pytest

from saffron_runtime.cancel import is_stopped, new_stop_event, raise_if_stopped
from saffron_runtime.errors import (
    ConfigError,
    GuardrailViolation,
    SearchCancelled,
    Verdict,
    validate_on_violation,
)


def test_on_violation_vocabulary():
    for v in ("raise", "refuse", "truncate"):
        assert validate_on_violation(v) == v
    with pytest.raises(ConfigError, match=r"on_violation='block'.*raise, refuse, truncate"):
        validate_on_violation("block")


def test_violation_carries_verdict_and_says_where():
    v = Verdict(unsafe=True, rule="delay-k", score=0.93, position=12, span=(40, 44), text="bomb")
    err = GuardrailViolation(v)
    assert err.verdict is v
    assert "delay-k" in str(err) and "token 12" in str(err) and "0.93" in str(err)
    assert v.to_dict()["span"] == [40, 44]


def test_monitor_failure_verdict_fails_closed():
    v = Verdict.monitor_failure("TimeoutError after 2.0 s", position=3)
    assert v.unsafe and v.monitor_failed and v.rule == "monitor-failed"
    assert "monitor failed" in str(GuardrailViolation(v))


def test_stop_event():
    ev = new_stop_event()
    assert not is_stopped(ev) and not is_stopped(None)
    raise_if_stopped(ev)
    ev.set()
    with pytest.raises(SearchCancelled, match="search stopped"):
        raise_if_stopped(ev, "search")
