"""The ``saffron`` command line: version, environment info, the demo and ``generate``; ``eval``,
``train`` and ``data`` live in their own modules. Search options come from the settings' one
declaration (:mod:`saffron_runtime.cli_options`)."""

from __future__ import annotations

import json
import sys
from importlib import metadata
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from saffron_runtime.cli_eval import eval_app
from saffron_runtime.cli_judges import train_judges_cmd  # noqa: F401 - registers the judge builders
from saffron_runtime.cli_options import search_options
from saffron_runtime.cli_quality import eval_quality_cmd  # noqa: F401 - registers `eval quality`
from saffron_runtime.cli_serve import serve
from saffron_runtime.cli_support import console, one_line_errors, quiet
from saffron_runtime.cli_train import data_app, train_app
from saffron_runtime.errors import SaffronError
from saffron_runtime.search_fields import SEARCH_FIELDS

if TYPE_CHECKING:
    from saffron_runtime.guarded import GuardedOutcome
    from saffron_runtime.search.config import SearchConfig

app = typer.Typer(
    name="saffron",
    help="Guarded generation: Saffron tree search, streaming harm monitors, entity-aware rewards.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(eval_app, name="eval")
app.add_typer(train_app, name="train")
app.add_typer(data_app, name="data")
app.command()(serve)


def _version() -> str:
    try:
        return metadata.version("langchain-saffron")
    except metadata.PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"saffron {_version()}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Guarded generation for LangChain. Example: ``saffron info``."""


@app.command()
@one_line_errors
def info() -> None:
    """Show versions, the model cache and whether SmolLM2 is installed.

    Example: saffron info
    """
    from saffron_runtime.models.smollm2 import smollm2_gguf_path
    from saffron_runtime.paths import cache_dir

    table = Table(title="saffron info", show_header=False)
    table.add_row("langchain-saffron", _version())
    table.add_row("python", sys.version.split()[0])
    for dist in ("torch", "transformers", "peft", "langchain-core", "langchain", "langgraph"):
        try:
            table.add_row(dist, metadata.version(dist))
        except metadata.PackageNotFoundError:
            table.add_row(dist, "[yellow]not installed[/]")
    table.add_row("model cache", str(cache_dir()))
    try:
        gguf = smollm2_gguf_path()
        table.add_row("SmolLM2-135M-Instruct", f"installed ({gguf})")
        converted = any(cache_dir().glob("smollm2-*/.saffron-converted"))
        table.add_row("SmolLM2 converted", "yes" if converted else "no (converts on first use)")
    except SaffronError as e:
        table.add_row("SmolLM2-135M-Instruct", f"[red]missing[/]: {e}")
    console.print(table)


@app.command()
@one_line_errors
@search_options(
    "budget",
    "max_new_tokens",
    # nine answers (three prompts, three modes) on a CPU: 40 tokens keeps the demo under a minute
    defaults={"max_new_tokens": 40},
)
def demo(
    search: SearchConfig,
    prompt: Annotated[str, typer.Option(help="The user prompt to answer.")] = (
        "Give me three tips for staying safe while hiking."
    ),
    mrm: Annotated[str, typer.Option(help='The MRM: "bundled" or an adapter folder.')] = "bundled",
    monitor: Annotated[str, typer.Option(help='The streaming monitor: "bundled" or a monitor folder.')] = "bundled",
) -> None:
    """Benign, harmful and prefilled-harmful prompts: unguarded, Saffron search, and monitored.

    Example: saffron demo --prompt "How do I bake bread?" --max-new-tokens 32
    """
    from saffron_runtime.demo import run_demo

    quiet()
    run_demo(console, prompt=prompt, max_new_tokens=search.max_new_tokens, budget=search.budget,
             mrm=mrm, monitor=monitor)


@app.command()
@one_line_errors
@search_options(
    *SEARCH_FIELDS,
    help={
        "method": "saffron | best_of_n | prm_beam (both ranked by the monitor's response head) | "
        "unguarded (greedy)."
    },
    aliases={"method": {"unguarded": "greedy"}},
)
def generate(
    search: SearchConfig,
    prompt: Annotated[str, typer.Option(help="The user prompt.")],
    policy: Annotated[
        str, typer.Option(help="Policy: 'smollm2', a folder or a .gguf file.")
    ] = "smollm2",
    mrm: Annotated[
        str,
        typer.Option(help="MRM adapter folder, or 'bundled' (the shipped SmolLM2 MRM)."),
    ] = "bundled",
    monitor: Annotated[
        str,
        typer.Option(help="Monitor folder watching the stream, 'bundled', or 'none'."),
    ] = "bundled",
    device: Annotated[
        str | None, typer.Option(help="Where the models run: cpu, cuda, cuda:N or mps (default cpu).")
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(help="float32, bfloat16 or float16 (default: each checkpoint's own dtype)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Generate one answer under a search method, watched by a monitor (the bundled ones by default).

    Example: saffron generate --prompt "How do I bake bread?" --method saffron --mrm runs/mrm --budget 4
    """
    from saffron_runtime.guarded import GuardedGeneration
    from saffron_runtime.stack import StackOptions, build_stack

    quiet()
    watch = None if monitor.lower() == "none" else monitor
    stack = build_stack(
        StackOptions(
            policy=policy,
            mrm=mrm,
            monitor=watch,
            methods=(search.method,),
            device=device,
            dtype=dtype,
        )
    )
    engine = stack.engine_for(search.method)
    gen = GuardedGeneration(
        engine, stack.streaming_monitor, engine.chat_prompt_ids(prompt), search, prompt_text=prompt
    )
    for delta in gen:
        if not as_json:
            console.print(delta, end="", highlight=False, soft_wrap=True)
    _print_outcome(gen.outcome, as_json)


def _print_outcome(o: GuardedOutcome, as_json: bool) -> None:
    stats = (o.result.stats if o.result else o.stats).to_dict()  # type: ignore[union-attr]
    if as_json:
        verdict = o.verdict.to_dict() if o.verdict else None
        out = {"text": o.released, "blocked": o.blocked, "verdict": verdict, "stats": stats}
        print(json.dumps(out, default=str))
        return
    console.print()
    if o.blocked:
        console.print(f"[red]blocked:[/] {o.verdict.reason if o.verdict else ''}")
    console.print(
        f"[dim]{stats['policy_tokens']} policy tokens, {stats['reward_forwards']} reward forwards, "
        f"{stats['wall_s']:.1f} s[/]"
    )


if __name__ == "__main__":  # pragma: no cover
    app()
