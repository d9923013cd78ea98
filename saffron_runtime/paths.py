"""Where Saffron keeps converted models and other derived files (never inside the package)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: ``$SAFFRON_CACHE_DIR``, else ``$XDG_CACHE_HOME/saffron``, else ``~/.cache/saffron``."""
    env = os.environ.get("SAFFRON_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "saffron"
