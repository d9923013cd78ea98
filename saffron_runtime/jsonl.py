"""JSONL reading with up-front validation: a bad line is reported with its file and line number."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from saffron_runtime.errors import DataError

M = TypeVar("M", bound=BaseModel)


def iter_jsonl(path: str | os.PathLike[str], schema: type[M]) -> Iterator[M]:
    """Yield validated records; raise :class:`DataError` naming ``file:line`` on the first bad one."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file {p} does not exist")
    with p.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{n}: not valid JSON ({e.msg} at column {e.colno})") from e
            try:
                yield schema.model_validate(obj)
            except ValidationError as e:
                errs = "; ".join(
                    f"{'.'.join(str(x) for x in err['loc']) or 'record'}: {err['msg']}"
                    for err in e.errors()[:3]
                )
                raise DataError(f"{p}:{n}: {errs}") from e


def read_jsonl(path: str | os.PathLike[str], schema: type[M]) -> list[M]:
    """All records of a JSONL file, validated before any is used."""
    records = list(iter_jsonl(path, schema))
    if not records:
        raise DataError(f"data file {path} has no records")
    return records


def write_jsonl(path: str | os.PathLike[str], records: Iterable[BaseModel | dict]) -> int:
    """Write records (pydantic models or dicts) one per line, atomically; return how many."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            d = r.model_dump(mode="json") if isinstance(r, BaseModel) else r
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, p)
    return n
