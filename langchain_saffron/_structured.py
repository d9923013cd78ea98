"""Structured output for ChatSaffron by grammar-constrained decoding."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.runnables import Runnable


def json_schema_output(
    model: BaseChatModel,
    schema: dict[str, Any] | type | None,
    *,
    include_raw: bool,
    method: str,
) -> Runnable[LanguageModelInput, Any]:
    """A JSON value matching ``schema`` (``json_schema``, and ``json_mode`` when a schema is given: a
    small model asked for "JSON" writes any object otherwise; with no schema, any JSON object)."""
    from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
    from langchain_core.runnables import RunnableMap, RunnablePassthrough
    from langchain_core.utils.function_calling import convert_to_json_schema
    from langchain_core.utils.pydantic import is_basemodel_subclass

    is_model = isinstance(schema, type) and is_basemodel_subclass(schema)
    if method == "json_mode" and not schema:
        json_schema: dict[str, Any] = {"type": "object"}
    elif is_model:
        json_schema = schema.model_json_schema()  # type: ignore[union-attr]
    else:
        json_schema = convert_to_json_schema(schema)  # type: ignore[arg-type]
    llm = model.bind(
        response_format={"type": "json_schema", "schema": json_schema},
        ls_structured_output_format={"kwargs": {"method": method}, "schema": schema},
    )
    parser: Callable[..., Any] | Any = (
        PydanticOutputParser(pydantic_object=schema) if is_model else JsonOutputParser()  # type: ignore[arg-type]
    )
    if not include_raw:
        return llm | parser
    assign = RunnablePassthrough.assign(
        parsed=lambda x: parser.invoke(x["raw"]), parsing_error=lambda _: None
    )
    fallback = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=llm) | assign.with_fallbacks([fallback], exception_key="parsing_error")
