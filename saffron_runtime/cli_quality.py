"""``saffron eval quality``: how each decoding method writes on benign prompts (the report beside the
attack report). Registered on the ``eval`` command group."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from saffron_runtime.cli_eval import eval_app
from saffron_runtime.cli_support import console, one_line_errors, quiet


@eval_app.command("quality")
@one_line_errors
def eval_quality_cmd(
    prompts: Annotated[Path, typer.Option(help="Benign prompts JSONL (id, prompt).")],
    out: Annotated[
        Path,
        typer.Option(help="Report JSON (per-method means, 10 outputs each; <out>_outputs.md beside it)."),
    ],
    cache: Annotated[
        Path, typer.Option(help="Output cache JSONL (appended; a rerun resumes).")
    ] = Path("runs/quality/cache.jsonl"),
    methods: Annotated[
        str, typer.Option(help="Comma-separated names (see evaluation/quality_run.py).")
    ] = "greedy,best_of_1,saffron,saffron_reward",
    budget: Annotated[int, typer.Option(min=1, help="Budget of Saffron and PRM beam.")] = 4,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens per answer.")] = 64,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N prompts.")] = None,
    mrm: Annotated[str, typer.Option(help="MRM folder, or 'bundled'.")] = "bundled",
    plot: Annotated[Path | None, typer.Option(help="Write a PNG of the main measures.")] = None,
) -> None:
    """Repetition, the policy's NLL per token, length and refusal rate of every method on benign prompts.

    Example: saffron eval quality --prompts runs/quality/benign.jsonl --out benchmarks/results/quality.json
    """
    from saffron_runtime.evaluation.quality_run import QualityPrompt, outputs_markdown, run_quality
    from saffron_runtime.evaluation.text_judges import load_judges
    from saffron_runtime.jsonl import iter_jsonl
    from saffron_runtime.stack import StackOptions, build_stack

    quiet()
    rows = [r.model_dump() for r in iter_jsonl(prompts, QualityPrompt)]
    rows = rows[:limit] if limit else rows
    names = [m.strip() for m in methods.split(",") if m.strip()]
    stack = build_stack(StackOptions(mrm=mrm, monitor=None))
    _, refusal = load_judges()
    report = run_quality(
        stack,
        rows,
        names,
        cache,
        budget=budget,
        max_new_tokens=max_new_tokens,
        refusal_judge=refusal,
    )
    report["command"] = {
        "prompts": str(prompts),
        "methods": names,
        "budget": budget,
        "max_new_tokens": max_new_tokens,
        "limit": limit,
        "mrm": mrm,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    out.with_name(f"{out.stem}_outputs.md").write_text(outputs_markdown(report))
    for m, s in report["methods"].items():
        console.print(
            f"{m:16s} 3-gram repeats {s['repeated_trigram_share']:.3f}  runs>=4 {s['runs_of_4']:3d}  "
            f"NLL/token {s['nll_per_token']:.3f}  tokens {s['tokens']:.1f}  "
            f"refusal {s.get('refusal_rate', float('nan')):.2f}  {s['wall_s_per_prompt']:.1f} s/prompt"
        )
    if plot is not None:
        _plot(report, plot)


def _plot(report: dict, path: Path) -> None:
    """One bar panel per measure, one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("repeated_trigram_share", "runs_of_4", "nll_per_token", "refusal_rate")
    names = list(report["methods"])
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    for ax, k in zip(axes, keys, strict=True):
        ax.bar(names, [report["methods"][m].get(k, 0.0) for m in names], color="#c98b2b")
        ax.set_title(k.replace("_", " "))
        ax.tick_params(axis="x", rotation=45)
    fig.suptitle(f"Benign prompts ({report['prompts']}): quality by method")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
