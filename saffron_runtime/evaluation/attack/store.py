"""The two on-disk stores of an attack evaluation.

``GenerationCache``: one JSON file per generation, text included (harmful rollouts: never committed),
keyed by a hash of everything that changes the output, so an interrupted run resumes where it
stopped. ``VerdictLedger``: one JSON line per judged generation with its cost and the judges' scores
and no text, so it can be committed and a run split across sittings on fresh clones resumes from it.
Both formats and the key are part of the published record: changing them orphans the committed
ledger.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Generation:
    """One cached output: what was generated and what it cost."""

    text: str
    token_ids: list[int]
    prefill_text: str
    prefill_ids: list[int]
    flops: float
    wall_s: float
    stats: dict[str, Any] = field(default_factory=dict)


WEIGHT_SUFFIXES = (".safetensors", ".pt", ".bin", ".gguf")


def fingerprint_files(*folders: str | os.PathLike[str] | None) -> str:
    """A short hash of the weight files under the given folders (a model's identity for the cache
    key); configs and cards are left out, so editing a threshold or a card keeps the cache."""
    h = hashlib.sha256()
    for folder in folders:
        if folder is None:
            h.update(b"none")
            continue
        root = Path(folder)
        for f in sorted(root.rglob("*")) if root.is_dir() else [root]:
            weights = f.suffix in WEIGHT_SUFFIXES or f.name == "adapter_config.json"
            if f.is_file() and weights and "checkpoints" not in f.parts:
                h.update(str(f.relative_to(root) if root.is_dir() else f.name).encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


class GenerationCache:
    """One JSON file per generation under ``folder``, written atomically, keyed by a hash."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(parts: dict[str, Any]) -> str:
        """The cache key of a generation: a hash of everything that affects it."""
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    def get(self, key: str) -> Generation | None:
        """The cached generation, or None (a torn or foreign file counts as missing)."""
        p = self.folder / f"{key}.json"
        if not p.is_file():
            return None
        try:
            return Generation(**json.loads(p.read_text())["generation"])
        except (json.JSONDecodeError, KeyError, TypeError):
            return None

    def put(self, key: str, parts: dict[str, Any], gen: Generation) -> None:
        """Store a generation with the parts of its key (for inspection)."""
        tmp = self.folder / f"{key}.json.{os.getpid()}.tmp"  # two workers may write one key
        tmp.write_text(json.dumps({"key": parts, "generation": asdict(gen)}))
        os.replace(tmp, self.folder / f"{key}.json")

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("*.json"))


LEDGER_FIELDS = ("learned_p", "independent_p", "refusal_p", "strings_refusal", "flops", "wall_s")


class VerdictLedger:
    """Append-only JSONL of judged generations without their text: the committable record of a run.

    One line per generation: its cache key, the judges' identity, the grid point, its cost and the
    judges' scores. A line whose judges differ from the current ones is ignored (judged again from
    the text cache, or regenerated). Torn lines (a killed writer) are skipped. Each line goes out in
    one ``O_APPEND`` write, so two workers can share one ledger.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rows: dict[tuple[str, str], dict[str, Any]] = {}
        self._size = -1

    def _refresh(self) -> None:
        """Re-read the file when it grew (another worker appended)."""
        size = self.path.stat().st_size if self.path.is_file() else 0
        if size == self._size:
            return
        self._size, self._rows = size, {}
        for line in self.path.read_text().splitlines() if size else []:
            try:
                row = json.loads(line)
                self._rows[row["key"], row["judges"]] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                continue

    def get(self, key: str, judges: str) -> dict[str, Any] | None:
        """The ledger line of a generation under these judges, or None."""
        self._refresh()
        row = self._rows.get((key, judges))
        return row if row is not None and all(f in row for f in LEDGER_FIELDS) else None

    def put(self, row: dict[str, Any]) -> None:
        """Append one line (key, judges, the grid point and every ``LEDGER_FIELDS`` entry)."""
        data = (json.dumps(row, sort_keys=True) + "\n").encode()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            if end and os.pread(fd, 1, end - 1) != b"\n":  # after a torn line: start a new one
                data = b"\n" + data
            os.write(fd, data)
        finally:
            os.close(fd)

    def __len__(self) -> int:
        self._refresh()
        return len(self._rows)
