"""Cancellation: every long operation takes a ``threading.Event`` and checks it once per step."""

from __future__ import annotations

import threading

from saffron_runtime.errors import SearchCancelled


def new_stop_event() -> threading.Event:
    """A fresh, unset stop signal."""
    return threading.Event()


def is_stopped(stop_event: threading.Event | None) -> bool:
    """True when a stop signal was given and has been set."""
    return stop_event is not None and stop_event.is_set()


def raise_if_stopped(stop_event: threading.Event | None, what: str = "operation") -> None:
    """Raise :class:`SearchCancelled` when the stop signal is set (call once per step)."""
    if is_stopped(stop_event):
        raise SearchCancelled(f"{what} stopped: its stop event was set")
