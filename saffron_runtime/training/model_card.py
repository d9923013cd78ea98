"""Model cards: a README.md next to trained weights saying data, rule, metrics, wall time, licences."""

from __future__ import annotations

import os
from pathlib import Path


def write_model_card(
    folder: str | os.PathLike[str], *, title: str, sections: dict[str, str]
) -> Path:
    """Write ``folder/README.md`` with one heading per section, in order."""
    body = [f"# {title}", ""]
    for head, text in sections.items():
        body += [f"## {head}", "", text.strip(), ""]
    path = Path(folder) / "README.md"
    path.write_text("\n".join(body))
    return path
