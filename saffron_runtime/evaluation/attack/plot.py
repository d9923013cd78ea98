"""The attack evaluation's figure: attack success rate against compute, one panel per judge."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from saffron_runtime.evaluation.attack.grid import METHODS
from saffron_runtime.evaluation.attack.stats import JUDGE_KEYS


def plot_asr(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str = "") -> Path:
    """ASR against TFLOPs per prompt, one panel per judge, one line per method (matplotlib, PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.2), sharey=True)
    for ax, (judge, _) in zip(axes, JUDGE_KEYS, strict=True):
        key = f"asr_{judge}"
        for m in METHODS:
            pts = sorted(
                (r["tflops_per_prompt"], r[key], r["budget"]) for r in rows if r["method"] == m
            )
            if not pts:
                continue
            xs, ys, _bs = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="o", label=m)
            for x, y, b in pts:
                if m != "unguarded":
                    ax.annotate(
                        str(b), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7
                    )
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap
        ax.set_xlabel("TFLOPs per prompt (policy + reward models)")
        ax.set_title(f"{judge} judge", fontsize=10)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("attack success rate")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
