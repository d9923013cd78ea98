"""Shared helpers for benchmark scripts: argument parsing, tables, JSON output."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the common ``--json`` and ``--threads`` flags."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    return p


def setup(args: argparse.Namespace) -> None:
    """Apply thread settings and switch to inference mode defaults."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "cuda": torch.cuda.is_available()}


def report(args: argparse.Namespace, title: str, results: dict[str, Any]) -> None:
    """Print ``results`` as a table, or as one JSON object with ``--json``."""
    results = {**results, "machine": machine()}
    if args.json:
        print(json.dumps(results, indent=2, default=float))
        return
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in results.items():
        if k != "machine":
            table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    Console().print(table)


def prompts_by_id(path: Path, ids: str) -> dict[str, str]:
    """The prompts of a JSONL (id, prompt) with the comma-separated ``ids``, in that order; exits naming
    the missing ids and how to build the file."""
    rows = {r["id"]: r["prompt"] for r in map(json.loads, path.read_text().splitlines()) if r}
    wanted = ids.split(",")
    missing = [i for i in wanted if i not in rows]
    if missing:
        raise SystemExit(f"--ids not in {path}: {', '.join(missing)} (build it with quality_set.py)")
    return {i: rows[i] for i in wanted}
