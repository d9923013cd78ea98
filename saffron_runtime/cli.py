"""The ``saffron`` command line: version, environment info and the demo (more commands join later)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from importlib import metadata
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from saffron_runtime.errors import SaffronError

app = typer.Typer(
    name="saffron",
    help="Guarded generation: Saffron tree search, streaming harm monitors, entity-aware rewards.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def _version() -> str:
    try:
        return metadata.version("langchain-saffron")
    except metadata.PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


def one_line_errors(fn: F) -> F:
    """Turn SaffronError into one red line on stderr and exit code 2, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SaffronError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


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
def demo(
    prompt: Annotated[str, typer.Option(help="The user prompt to answer.")] = (
        "Give me three tips for staying safe while hiking."
    ),
    max_new_tokens: Annotated[int, typer.Option(min=1, max=512, help="Tokens to generate.")] = 48,
) -> None:
    """Generate one answer on SmolLM2-135M-Instruct (the full guarded demo arrives with issue F1).

    Example: saffron demo --prompt "How do I bake bread?"
    """
    from saffron_runtime.demo import run_basic_demo

    run_basic_demo(console, prompt=prompt, max_new_tokens=max_new_tokens)


if __name__ == "__main__":  # pragma: no cover
    app()
