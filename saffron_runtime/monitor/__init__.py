"""Streaming partial-detection monitor (SCM): incremental scoring, decision rules, hold-back."""

from saffron_runtime.monitor.adapters import (
    CallableMonitor,
    ClassifierMonitor,
    SCMMonitor,
    StreamingMonitor,
)
from saffron_runtime.monitor.evaluate import evaluate_monitor
from saffron_runtime.monitor.model import SCMMonitorModel, load_monitor, save_monitor
from saffron_runtime.monitor.rules import MonitorRule
from saffron_runtime.monitor.session import MonitorSession, SCMSession

__all__ = [
    "CallableMonitor",
    "ClassifierMonitor",
    "MonitorRule",
    "MonitorSession",
    "SCMMonitor",
    "SCMMonitorModel",
    "SCMSession",
    "StreamingMonitor",
    "evaluate_monitor",
    "load_monitor",
    "save_monitor",
]
