"""The quality report: every decoding method on benign prompts, measured as :mod:`.quality` defines.

Each method is a named set of search settings (``QUALITY_METHODS``; ``saffron`` is ChatSaffron's
default objective, ``saffron_reward`` the paper's ranking). Outputs are cached per (method, prompt) in a
JSONL file, so an interrupted run resumes. The report holds per-method means, the settings, and 10
outputs per method verbatim (benign prompts only: nothing harmful is written).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from saffron_runtime.errors import ConfigError
from saffron_runtime.evaluation.quality import QualityRow, measure, summarise


class QualityPrompt(BaseModel):
    """One benign prompt of the report."""

    id: str
    prompt: str = Field(min_length=1)


QUALITY_METHODS: dict[str, dict[str, Any]] = {
    "greedy": {"method": "greedy"},
    "best_of_1": {"method": "best_of_n", "num_samples": 1, "temperature": 1.0, "top_p": 0.8},
    "best_of_8": {"method": "best_of_n", "num_samples": 8, "temperature": 1.0, "top_p": 0.8},
    "saffron": {"method": "saffron"},
    "saffron_reward": {"method": "saffron", "objective": "reward", "within_prefix_weight": 1.0},
    "saffron_no_repeat_3": {"method": "saffron", "no_repeat_ngram_size": 3},
    "saffron_no_repeat_4": {"method": "saffron", "no_repeat_ngram_size": 4},
    # the default until 2026-12-07: the MRM's raw rewards
    "saffron_unshrunk": {"method": "saffron", "within_prefix_weight": 1.0, "unsafe_logprob_weight": 0.0},
    "saffron_capped": {
        "method": "saffron",
        "within_prefix_weight": 1.0,
        "unseen_siblings_cap": True,
        "unsafe_logprob_weight": 4.0,
    },
    "saffron_shrink_t1": {
        "method": "saffron",
        "within_prefix_weight": 0.25,
        "unsafe_logprob_weight": 4.0,
        "safe_threshold": 1.0,
    },
    # today's default, spelled out so the published row's command does not move with the defaults
    "saffron_shrink_t2": {
        "method": "saffron",
        "within_prefix_weight": 0.25,
        "unsafe_logprob_weight": 4.0,
        "safe_threshold": 2.0,
    },
    "prm_beam": {"method": "prm_beam"},
    "prm_beam_reward": {"method": "prm_beam", "objective": "reward"},
}
"""Named methods of the report; Saffron and PRM beam take ``budget`` from the run."""


def method_config(name: str, *, budget: int, max_new_tokens: int, seed: int) -> Any:
    """The SearchConfig of a named method (no commit-lag pruning: the report reads whole answers)."""
    from saffron_runtime.search.config import SearchConfig

    if name not in QUALITY_METHODS:
        raise ConfigError(f"--methods: unknown {name!r}; choose from {', '.join(QUALITY_METHODS)}")
    fields = dict(QUALITY_METHODS[name])
    if fields["method"] in ("saffron", "prm_beam"):
        fields["budget"] = budget
    return SearchConfig(**fields, max_new_tokens=max_new_tokens, seed=seed, max_commit_lag=None)


def settings_key(config: Any) -> str:
    """A short hash of every search setting: a cached answer is reused only under the same settings,
    so a changed default, budget or length regenerates instead of reporting stale answers."""
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]


def _cached(path: Path, keys: dict[str, str]) -> dict[tuple[str, str], dict[str, Any]]:
    """The cached answers made under each method's current settings (``keys``: method -> settings key)."""
    if not path.is_file():
        return {}
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    return {(r["method"], r["id"]): r for r in rows if keys.get(r["method"]) == r.get("settings_key")}


def run_quality(
    stack: Any,
    prompts: Sequence[dict[str, str]],
    methods: Sequence[str],
    cache: str | os.PathLike[str],
    *,
    budget: int = 4,
    max_new_tokens: int = 64,
    seed: int = 0,
    refusal_judge: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate (or read from ``cache``) every method's answer to every prompt and summarise them."""
    cache_p = Path(cache)
    cache_p.parent.mkdir(parents=True, exist_ok=True)
    configs = {
        m: method_config(m, budget=budget, max_new_tokens=max_new_tokens, seed=seed)
        for m in methods
    }
    keys = {m: settings_key(c) for m, c in configs.items()}
    done = _cached(cache_p, keys)
    cols = (TextColumn("quality"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    total = len(methods) * len(prompts)
    with Progress(*cols, disable=not progress) as bar, cache_p.open("a", encoding="utf-8") as f:
        task = bar.add_task(
            "quality", total=total, completed=sum(k in done for k in _keys(methods, prompts))
        )
        for m in methods:
            engine = stack.engine_for(configs[m].method)
            for p in prompts:
                if (m, p["id"]) in done:
                    continue
                ids = engine.chat_prompt_ids(p["prompt"])
                t0 = time.perf_counter()
                r = engine.search(ids, configs[m], prompt_text=p["prompt"])
                row = {
                    "method": m,
                    "settings_key": keys[m],
                    "id": p["id"],
                    "prompt": p["prompt"],
                    "text": r.text,
                    "prompt_ids": ids,
                    "token_ids": r.token_ids,
                    "wall_s": time.perf_counter() - t0,
                }
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
                done[(m, p["id"])] = row
                bar.advance(task)
    return _report(stack, prompts, methods, configs, done, refusal_judge)


def _keys(methods: Sequence[str], prompts: Sequence[dict[str, str]]) -> list[tuple[str, str]]:
    return [(m, p["id"]) for m in methods for p in prompts]


def _report(
    stack: Any,
    prompts: Sequence[dict[str, str]],
    methods: Sequence[str],
    configs: dict[str, Any],
    done: dict[tuple[str, str], dict[str, Any]],
    refusal_judge: Any,
) -> dict[str, Any]:
    """Per-method summaries plus 10 verbatim outputs each."""
    out: dict[str, Any] = {"prompts": len(prompts), "methods": {}}
    for m in methods:
        rows = [done[(m, p["id"])] for p in prompts]
        refused = (
            refusal_judge.predict([r["text"] for r in rows])
            if refusal_judge
            else [None] * len(rows)
        )
        measured: list[QualityRow] = [
            measure(
                stack.policy,
                r["prompt_ids"],
                r["token_ids"],
                r["text"],
                bool(x) if x is not None else None,
            )
            for r, x in zip(rows, refused, strict=True)
        ]
        out["methods"][m] = {
            "settings": configs[m].model_dump(mode="json", exclude={"stop"}),
            **summarise(measured),
            "wall_s_per_prompt": sum(r["wall_s"] for r in rows) / len(rows),
            "examples": [{"prompt": r["prompt"], "output": r["text"]} for r in rows[:10]],
        }
    return out


def outputs_markdown(report: dict[str, Any]) -> str:
    """The report's verbatim outputs (10 per method) as Markdown, each answer block-quoted under its
    prompt, so a reader sees what each method writes beside its measures."""
    cmd = report.get("command", {})
    lines = [
        "# Benign outputs of each method, verbatim (first 10 of the quality report's prompts)",
        f"Budget {cmd.get('budget')}, {cmd.get('max_new_tokens')} new tokens, MRM {cmd.get('mrm')}. "
        "Written by `saffron eval quality` (see benchmarks/README.md).",
    ]
    for name, m in report["methods"].items():
        lines += ["", f"## {name}"]
        for ex in m["examples"]:
            quoted = "\n".join(f"> {x}".rstrip() for x in ex["output"].split("\n"))
            lines += ["", f"**{ex['prompt']}**", "", quoted]
    return "\n".join(lines) + "\n"

