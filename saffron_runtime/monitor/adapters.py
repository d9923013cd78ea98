"""Monitors behind one protocol: our SCM model, any HF sequence classifier re-scored over a sliding
window, and any Python callable (a user's classifier or a remote moderation API).

Faults fail closed by default: an exception or a timeout in a scorer stops the stream with a
``monitor-failed`` verdict that says why. ``fail_open=True`` logs the fault and lets the text through.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
from collections.abc import Callable
from typing import Protocol

import torch
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from saffron_runtime.errors import ConfigError, Verdict
from saffron_runtime.monitor.faults import checked_score, encodable, fault_verdict
from saffron_runtime.monitor.model import SCMMonitorModel
from saffron_runtime.monitor.rules import MonitorRule
from saffron_runtime.monitor.session import MonitorSession, SCMSession

log = logging.getLogger(__name__)


class StreamingMonitor(Protocol):
    """Opens a session per stream; optionally judges prompts."""

    def open(self, prompt: str) -> MonitorSession:
        """A fresh session for one response to ``prompt``."""
        ...


class SCMMonitor:
    """Our streaming monitor: per-token scores from one incremental forward per commit."""

    def __init__(
        self,
        model: SCMMonitorModel,
        *,
        rule: MonitorRule | None = None,
        hold_back: int | None = None,
        fail_open: bool = False,
        max_text_chars: int = 65_536,
    ) -> None:
        if max_text_chars < 1:
            raise ConfigError(f"max_text_chars={max_text_chars} must be >= 1 character")
        self.max_text_chars = max_text_chars  # a longer text fails closed instead of running for minutes
        self.model = model
        self.rule = rule or model.rule
        self.hold_back = model.hold_back if hold_back is None else hold_back
        self.fail_open = fail_open  # a fault lets the stream through (logged) instead of stopping it
        self.name = "scm"

    def open(self, prompt: str) -> SCMSession:
        """A session with its own KV cache."""
        return SCMSession(
            self.model,
            prompt,
            rule=self.rule,
            hold_back=self.hold_back,
            fail_open=self.fail_open,
            max_text_chars=self.max_text_chars,
        )

    def has_prompt_head(self) -> bool:
        """True when this monitor can judge requests before generation."""
        return self.model.prompt_head is not None

    def check_prompt(self, prompt: str, theta: float | None = None) -> Verdict | None:
        """Judge the request before generation with the prompt head (None when it looks safe).

        ``theta`` defaults to the threshold saved with the monitor (chosen on validation prompts).
        """
        theta = self.model.prompt_theta if theta is None else theta
        score = self.model.prompt_score(prompt)
        if score >= theta:
            return Verdict(
                unsafe=True,
                rule="prompt",
                score=score,
                reason=f"prompt head score {score:.3f} >= {theta}",
            )
        return None


class _RescoringSession:
    """Calls a text scorer on the text so far every ``every_chars`` characters and at the end."""

    def __init__(
        self,
        score: Callable[[str], float],
        *,
        theta: float,
        every_chars: int,
        fail_open: bool,
        name: str,
    ) -> None:
        self._score = score
        self.theta = theta
        self.every = every_chars
        self.fail_open = fail_open
        self.name = name
        self.verdict: Verdict | None = None
        self._text = ""
        self._scored = 0
        self._released = 0
        self._calls = 0

    def _check(self) -> Verdict | None:
        self._calls += 1
        try:
            s = checked_score(self._score(self._text), f"monitor {self.name}")
        except Exception as e:  # noqa: BLE001 - any scorer fault is handled by policy
            self.verdict = fault_verdict(
                e, name=self.name, fail_open=self.fail_open, position=len(self._text)
            )
            if self.verdict is None:  # failed open: the text checked now passes unjudged
                self._scored = len(self._text)
            return self.verdict
        if s >= self.theta:
            self.verdict = Verdict(
                unsafe=True,
                rule=f"{self.name}-threshold",
                score=s,
                position=len(self._text),
                span=(self._scored, len(self._text)),
                text=self._text[self._scored :],
                reason=f"{self.name} score {s:.3f} >= {self.theta}",
            )
            return self.verdict
        self._scored = len(self._text)
        return None

    def feed_text(self, text: str | bytes) -> Verdict | None:
        """Add text; re-score when enough has arrived since the last check."""
        if self.verdict is not None:
            return self.verdict
        self._text += encodable(
            text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
        )
        if len(self._text) - self._scored >= self.every:
            return self._check()
        return None

    def finish(self) -> Verdict | None:
        """Score whatever has not been scored yet."""
        if self.verdict is None and len(self._text) > self._scored:
            return self._check()
        return self.verdict

    def release(self) -> str:
        """Text covered by a clean score."""
        out = self._text[self._released : self._scored]
        self._released = self._scored
        return out

    release_all = release


class CallableMonitor:
    """Any ``fn(prompt, text) -> harm score in [0, 1] (or bool)`` with retries and a timeout."""

    def __init__(
        self,
        fn: Callable[[str, str], float | bool],
        *,
        theta: float = 0.5,
        every_chars: int = 64,
        timeout_s: float = 5.0,
        retries: int = 2,
        fail_open: bool = False,
        name: str = "callable",
    ) -> None:
        if timeout_s <= 0:
            raise ConfigError(f"timeout_s={timeout_s} must be > 0 seconds")
        if retries < 0:
            raise ConfigError(f"retries={retries} must be >= 0")
        self.fn, self.theta, self.every, self.timeout_s = fn, theta, every_chars, timeout_s
        self.retries, self.fail_open, self.name = retries, fail_open, name
        self._pool = cf.ThreadPoolExecutor(max_workers=8, thread_name_prefix="saffron-monitor")

    def _call_once(self, prompt: str, text: str) -> float:
        fut = self._pool.submit(self.fn, prompt, text)
        try:
            return checked_score(fut.result(timeout=self.timeout_s), f"monitor {self.name}")
        except cf.TimeoutError as e:
            fut.cancel()  # a hung scorer keeps its worker thread, but the stream does not wait for it
            raise TimeoutError(f"{self.name} did not answer within {self.timeout_s} s") from e

    def score(self, prompt: str, text: str) -> float:
        """One judgement, retried with exponential back-off; raises the last error."""
        for attempt in Retrying(
            stop=stop_after_attempt(self.retries + 1),
            reraise=True,
            wait=wait_exponential(multiplier=0.05, max=1.0),
            retry=retry_if_exception_type(Exception),
        ):
            with attempt:
                return self._call_once(prompt, text)
        raise AssertionError("unreachable")  # pragma: no cover

    def open(self, prompt: str) -> _RescoringSession:
        """A session that re-scores the text so far every ``every_chars`` characters."""
        return _RescoringSession(
            lambda text: self.score(prompt, text),
            theta=self.theta,
            every_chars=self.every,
            fail_open=self.fail_open,
            name=self.name,
        )


class ClassifierMonitor:
    """A Hugging Face sequence-classification model re-scored over a sliding window of the text
    (the chunked approach of other guardrail tools); O(window) per check."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        harmful_label: int = 1,
        theta: float = 0.5,
        window_tokens: int = 256,
        every_chars: int = 64,
        fail_open: bool = False,
    ) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.harmful_label, self.theta = harmful_label, theta
        self.window, self.every, self.fail_open = window_tokens, every_chars, fail_open
        self._lock = threading.Lock()

    def score(self, prompt: str, text: str) -> float:
        """Harm probability of the last ``window_tokens`` tokens of prompt + response."""
        ids = self.tokenizer(prompt, text, truncation="only_first", max_length=10**6)["input_ids"]
        ids = ids[-self.window :]
        with torch.no_grad(), self._lock:
            logits = (
                self.model(input_ids=torch.tensor([ids], device=self.model.device))
                .logits[0]
                .float()
            )
        return float(torch.softmax(logits, -1)[self.harmful_label])

    def open(self, prompt: str) -> _RescoringSession:
        """A session that re-scores a sliding window every ``every_chars`` characters."""
        return _RescoringSession(
            lambda text: self.score(prompt, text),
            theta=self.theta,
            every_chars=self.every,
            fail_open=self.fail_open,
            name="classifier",
        )


def prompt_checker(monitor: object) -> Callable[..., Verdict | None] | None:
    """The monitor's ``check_prompt`` when it can judge requests (it has a prompt head), else None."""
    check = getattr(monitor, "check_prompt", None)
    has_head = getattr(monitor, "has_prompt_head", None)
    return check if check is not None and has_head is not None and has_head() else None

