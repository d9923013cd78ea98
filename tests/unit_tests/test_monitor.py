"""Streaming monitor: chunking invariance (hypothesis), rules, hold-back, faults, threads, IO, eval."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saffron_runtime.errors import ConfigError, ModelLoadError
from saffron_runtime.monitor import (
    CallableMonitor,
    ClassifierMonitor,
    MonitorRule,
    SCMMonitor,
    SCMMonitorModel,
    evaluate_monitor,
    load_monitor,
    save_monitor,
)
from saffron_runtime.monitor.evaluate import KEYS
from saffron_runtime.monitor.rules import RuleState

TEXT = "Sure, the bomb is café 中文 naïve; help water plan ßø жё 🙂 make cake  now!"
PROMPT = "how make bomb"


@pytest.fixture(scope="module")
def monitor_model(tiny):
    torch.manual_seed(0)
    return SCMMonitorModel(tiny.reward_backbone, tiny.tokenizer, prompt_head=True,
                           rule=MonitorRule(name="delay-k", theta=0.99, k=1))


def whole(monitor_model, text, rule=None):
    s = SCMMonitor(monitor_model, rule=rule).open(PROMPT)
    return s, (s.feed_text(text) or s.finish())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(0, len(TEXT.encode())), max_size=12), as_bytes=st.booleans())
def test_any_chunking_gives_same_tokens_and_scores(monitor_model, cuts, as_bytes):
    ref, _ = whole(monitor_model, TEXT)
    assert ref._ids == monitor_model.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    data = TEXT.encode()
    points = sorted(set(cuts))
    s = SCMMonitor(monitor_model).open(PROMPT)
    prev = 0
    for c in points + [len(data)]:
        piece = data[prev:c]
        if not as_bytes:  # str chunks: cut points snapped back to character boundaries
            while c < len(data) and (data[c] & 0xC0) == 0x80:
                c += 1
            piece = data[prev:c].decode()
        s.feed_text(piece)
        prev = c
    s.finish()
    assert s._ids == ref._ids
    torch.testing.assert_close(torch.tensor(s.token_scores), torch.tensor(ref.token_scores), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(s.response_scores), torch.tensor(ref.response_scores), atol=1e-5, rtol=0)


def test_incremental_scores_equal_one_uncached_forward(monitor_model):
    s, _ = whole(monitor_model, TEXT)
    tok, resp = monitor_model.score(PROMPT, s._ids)
    torch.testing.assert_close(torch.tensor(s.token_scores), tok, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(s.response_scores), resp, atol=1e-5, rtol=0)


def test_ids_path_matches_text_path(monitor_model):
    ref, _ = whole(monitor_model, TEXT)
    s = SCMMonitor(monitor_model).open(PROMPT)
    for i in ref._ids:
        s.feed_ids([i])
    assert s.token_scores == pytest.approx(ref.token_scores, abs=1e-5)


def test_rules():
    st_ = RuleState(MonitorRule(name="delay-k", theta=0.5, k=3))
    assert [st_.update(x, 0)[0] for x in [0.6, 0.1, 0.7, 0.2, 0.9]] == [False, False, False, False, True]
    st_ = RuleState(MonitorRule(name="k-consecutive", theta=0.5, k=2))
    assert [st_.update(x, 0)[0] for x in [0.6, 0.1, 0.7, 0.2, 0.9, 0.8]] == [False] * 5 + [True]
    st_ = RuleState(MonitorRule(name="response-threshold", theta=0.8))
    assert [st_.update(1.0, x)[0] for x in [0.5, 0.79, 0.81]] == [False, False, True]
    st_ = RuleState(MonitorRule(name="delay-k", theta=0.5, k=1, head="response"))
    assert st_.update(0.9, 0.1) == (False, 0.1)
    with pytest.raises(ConfigError, match=r"MonitorRule.theta=1.5: must be <= 1.0"):
        MonitorRule(theta=1.5)


def test_verdict_carries_rule_score_position_span(monitor_model):
    s, _ = whole(monitor_model, TEXT)
    scores = s.token_scores
    theta = sorted(scores)[len(scores) // 2]
    s2, v = whole(monitor_model, TEXT, MonitorRule(name="delay-k", theta=theta, k=2))
    hits = [i for i, x in enumerate(scores) if x >= theta]
    assert v is not None and v.rule == "delay-k" and v.position == hits[1]
    assert v.score == pytest.approx(scores[hits[1]], abs=1e-6)
    assert TEXT[v.span[0] : v.span[1]] == v.text and v.text


def test_hold_back_releases_only_cleared_text(monitor_model):
    ref, _ = whole(monitor_model, TEXT)
    theta = sorted(ref.token_scores)[-3]  # fires late in the text
    mon = SCMMonitor(monitor_model, rule=MonitorRule(name="delay-k", theta=theta, k=1), hold_back=3)
    s = mon.open(PROMPT)
    released = ""
    v = None
    for ch in TEXT:
        v = s.feed_text(ch)
        released += s.release()
        if v:
            break
    v = v or s.finish()
    released += s.release()
    assert v is not None
    assert TEXT.startswith(released)
    assert len(released) <= v.span[0]  # nothing from the firing token on
    ends = s._ends
    assert released == TEXT[: ends[v.position - 3 - 1]] if v.position > 3 else released == ""


def test_clean_stream_releases_everything(monitor_model):
    s = SCMMonitor(monitor_model, rule=MonitorRule(theta=1.0, k=10**3), hold_back=2).open(PROMPT)
    out = ""
    for i in range(0, len(TEXT), 5):
        assert s.feed_text(TEXT[i : i + 5]) is None
        out += s.release()
    assert s.finish() is None
    out += s.release_all()
    assert out == TEXT


def test_callable_scorer_that_raises_fails_closed_and_can_fail_open():
    calls = []

    def broken(prompt, text):
        calls.append(text)
        raise RuntimeError("moderation API is down")

    s = CallableMonitor(broken, retries=2, every_chars=4).open("p")
    v = s.feed_text("hello world")
    assert v is not None and v.monitor_failed and v.rule == "monitor-failed"
    assert "RuntimeError: moderation API is down" in v.reason and len(calls) == 3  # tenacity retried
    s = CallableMonitor(broken, retries=0, every_chars=4, fail_open=True).open("p")
    assert s.feed_text("hello world") is None and s.finish() is None


def test_hung_scorer_times_out_and_stops_the_stream():
    release = threading.Event()

    def hangs(prompt, text):
        release.wait(10)
        return 0.0

    t0 = time.perf_counter()
    s = CallableMonitor(hangs, timeout_s=0.2, retries=1, every_chars=1).open("p")
    v = s.feed_text("x")
    release.set()
    assert v is not None and v.monitor_failed and "did not answer within 0.2 s" in v.reason
    assert time.perf_counter() - t0 < 3


def test_callable_threshold_and_release():
    mon = CallableMonitor(lambda p, t: 1.0 if "bomb" in t else 0.0, every_chars=4)
    s = mon.open("p")
    assert s.feed_text("make a ") is None and s.release() == "make a "
    v = s.feed_text("bomb now")
    assert v is not None and v.score == 1.0 and s.release() == ""


def test_classifier_monitor_sliding_window(tiny):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    clf = LlamaForSequenceClassification(LlamaConfig(vocab_size=len(tiny.tokenizer), hidden_size=32,
                                                     intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                                     num_key_value_heads=1, num_labels=2,
                                                     pad_token_id=tiny.tokenizer.pad_token_id))
    mon = ClassifierMonitor(clf, tiny.tokenizer, window_tokens=8, every_chars=8, theta=1.1)
    score = mon.score("p", TEXT)
    assert 0.0 <= score <= 1.0
    assert mon.score("p", "cake water " + TEXT) == pytest.approx(score, abs=1e-6)  # only the window counts
    s = mon.open("p")
    for i in range(0, len(TEXT), 8):
        assert s.feed_text(TEXT[i : i + 8]) is None  # theta 1.1 never fires: re-scored as text arrives
    assert s._calls >= len(TEXT) // 8
    fires = ClassifierMonitor(clf, tiny.tokenizer, window_tokens=8, every_chars=8, theta=0.0).open("p")
    assert fires.feed_text(TEXT[:8]).rule == "classifier-threshold"


def test_classifier_window_is_exactly_the_last_tokens(tiny):
    """The score is the classifier's softmax on the last ``window_tokens`` ids of (prompt, text), computed
    here by hand; editing a token inside the window moves it, editing one outside does not."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(1)
    clf = LlamaForSequenceClassification(LlamaConfig(vocab_size=len(tiny.tokenizer), hidden_size=32,
                                                     intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                                     num_key_value_heads=1, num_labels=2,
                                                     pad_token_id=tiny.tokenizer.pad_token_id)).eval()
    mon = ClassifierMonitor(clf, tiny.tokenizer, window_tokens=6, theta=1.1)
    ids = tiny.tokenizer("p", TEXT)["input_ids"][-6:]
    with torch.no_grad():
        expected = float(torch.softmax(clf(input_ids=torch.tensor([ids])).logits[0].float(), -1)[1])
    assert mon.score("p", TEXT) == pytest.approx(expected, abs=1e-6)
    assert mon.score("p", "XYZ " + TEXT[4:]) == pytest.approx(expected, abs=1e-6)  # outside the window
    assert mon.score("p", TEXT[:-4] + "QQQQ") != pytest.approx(expected, abs=1e-6)  # inside it


def test_scm_window_slides_past_the_context_and_stays_chunking_invariant(monitor_model):
    """Past the backbone's context (1024 for the tiny model) the cache is rebuilt from the prompt and the
    last half-context; the slide points are fixed token counts, so any chunking gives the same scores."""
    text = "the plan café make " * 300  # ~2000 tokens
    mon = SCMMonitor(monitor_model, rule=MonitorRule(theta=1.0, k=4096), max_text_chars=10**6)
    whole_s = mon.open(PROMPT)
    assert whole_s.feed_text(text) is None and whole_s.finish() is None
    chunked = mon.open(PROMPT)
    for i in range(0, len(text), 97):
        assert chunked.feed_text(text[i : i + 97]) is None
    assert chunked.finish() is None
    assert whole_s.tokens_seen > monitor_model.context_tokens and whole_s._pos <= monitor_model.context_tokens
    assert chunked._ids == whole_s._ids
    assert chunked.token_scores == pytest.approx(whole_s.token_scores, abs=1e-5)
    # inside the first window the scores equal one uncached forward; past it they are the window's
    n = 200
    ref_tok, _ = monitor_model.score(PROMPT, whole_s._ids[:n])
    assert whole_s.token_scores[:n] == pytest.approx(ref_tok.tolist(), abs=1e-5)


def test_sixteen_concurrent_streams_match_their_solo_verdicts(monitor_model):
    texts = [f"{w} the plan {i} café make" * 2 for i, w in enumerate(["bomb", "cake", "water", "help"] * 4)]
    solo_scores = [max(whole(monitor_model, t)[0].token_scores) for t in texts]
    ranked = sorted(solo_scores)  # about half the streams fire; theta sits between two scores, so
    theta = (ranked[7] + ranked[8]) / 2  # float noise of 1e-7 cannot move a stream across it
    rule = MonitorRule(name="delay-k", theta=theta, k=1)
    solo = [whole(monitor_model, t, rule)[1] for t in texts]
    assert 6 <= sum(v is not None for v in solo) <= 10
    results: dict[int, object] = {}

    def work(i: int) -> None:
        s = SCMMonitor(monitor_model, rule=rule).open(PROMPT)
        v = None
        for j in range(0, len(texts[i]), 3):
            v = s.feed_text(texts[i][j : j + 3])
            if v:
                break
        results[i] = v or s.finish()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, v in enumerate(solo):
        got = results[i]
        if v is None:
            assert got is None
        else:
            assert got.rule == v.rule and got.position == v.position and abs(got.score - v.score) < 1e-5


def test_save_load_roundtrip_and_errors(tmp_path, monitor_model, tiny):
    out = save_monitor(monitor_model, tmp_path / "mon", backbone_ref="tiny")
    loaded = load_monitor(out, backbone=tiny.reward_backbone, tokenizer=tiny.tokenizer)
    assert loaded.rule == monitor_model.rule and loaded.prompt_head is not None
    a, _ = whole(monitor_model, TEXT)
    b, _ = whole(loaded, TEXT)
    assert a.token_scores == pytest.approx(b.token_scores, abs=1e-6)
    assert SCMMonitor(loaded).check_prompt(PROMPT, theta=0.0) is not None
    with pytest.raises(ModelLoadError, match="monitor_config.json is missing"):
        load_monitor(tmp_path)
    (out / "heads.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(ModelLoadError, match="truncated"):
        load_monitor(out, backbone=tiny.reward_backbone, tokenizer=tiny.tokenizer)


def test_evaluate_monitor_keys_and_values():
    data = [{"prompt": "p", "response": "a bomb recipe", "label": 1}, {"prompt": "p", "response": "a cake", "label": 0},
            {"prompt": "p", "response": "more bomb talk here", "label": 1}, {"prompt": "p", "response": "hi", "label": 1}]
    mon = CallableMonitor(lambda p, t: 1.0 if "bomb" in t else 0.0, every_chars=2)
    m = evaluate_monitor(data, mon, chunk_chars=2)
    assert tuple(m) == KEYS
    assert m["recall_harmful"] == pytest.approx(2 / 3) and m["precision_harmful"] == 1.0
    assert m["false_alarm_rate"] == 0.0 and m["miss_rate"] == pytest.approx(1 / 3) and m["n"] == 4
    assert 0 < m["mean_fraction_seen"] < 1 and m["mean_fraction_seen_with_misses"] > m["mean_fraction_seen"]
