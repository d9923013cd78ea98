"""Command-line options generated from the search settings' one declaration
(:class:`~saffron_runtime.search_fields.SearchFields`): names, defaults and help come from the fields,
and the values are validated as one :class:`SearchConfig` before the command runs."""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any

import typer

from saffron_runtime.search_fields import SearchFields


def _cli_type(annotation: Any) -> Any:
    """The type typer parses: Literal choices as str (SearchConfig names the allowed ones)."""
    if typing.get_origin(annotation) is typing.Literal:
        return str
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return inner[0] | None
    return annotation


def _help(name: str) -> str:
    """The field docstring's first sentence."""
    doc = " ".join((SearchFields.model_fields[name].description or "").split())
    return doc.split(". ")[0].rstrip(".") + "."


def search_options(
    *names: str,
    defaults: Mapping[str, Any] | None = None,
    help: Mapping[str, str] | None = None,  # noqa: A002 - typer's own word for it
    aliases: Mapping[str, Mapping[str, Any]] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add an option per search field in ``names`` to a command, which receives them as one validated
    ``search: SearchConfig`` (a bad value is a one-line ConfigError naming the field, raised before any
    model loads). ``defaults`` / ``help`` override a field's for this command (say why where used);
    ``aliases`` maps extra command-line values, e.g. ``{"method": {"unguarded": "greedy"}}``."""
    defaults, help, aliases = defaults or {}, help or {}, aliases or {}
    unknown = set(names) - set(SearchFields.model_fields)
    if unknown:
        raise ValueError(f"not search settings: {sorted(unknown)}")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn)
        hints = {  # evaluated here: ``search``'s own annotation may name a type-checking import
            k: eval(v, fn.__globals__) if isinstance(v, str) else v  # noqa: S307 - our own source
            for k, v in fn.__annotations__.items()
            if k not in ("search", "return")
        }
        kept = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in sig.parameters.values()
            if p.name != "search"
        ]
        added = []
        for name in names:
            field = SearchFields.model_fields[name]
            option = typer.Option(f"--{name.replace('_', '-')}", help=help.get(name, _help(name)))
            added.append(
                inspect.Parameter(
                    name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=defaults.get(name, field.default),
                    annotation=Annotated[_cli_type(field.annotation), option],
                )
            )

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            from saffron_runtime.search.config import SearchConfig

            values = {n: kwargs.pop(n) for n in names}
            for n, mapping in aliases.items():
                values[n] = mapping.get(values[n], values[n])
            return fn(search=SearchConfig(**values), **kwargs)

        command.__signature__ = sig.replace(parameters=[*kept, *added], return_annotation=None)  # type: ignore[attr-defined]
        command.__annotations__ = {}
        return command

    return decorate
