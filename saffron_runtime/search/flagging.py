"""Pruning flagged beams: a monitor scores every live beam's newest token, and flagged beams leave the
frontier before anything they hold is committed (``SearchConfig.prune_flagged_beams``).

A :class:`BeamMonitor` reads the hidden state the policy's trie kept on each new beam's node (the
engine asks the trie to keep them while such a monitor is attached), so scoring a frontier costs the
monitor's heads only, never a backbone forward. Each beam carries the monitor's rule state for its
own path (``Beam.guard``): a child starts from its parent's, so a beam is flagged exactly when the
streaming monitor would fire on its text.

What is not scored here: a beam's last token when the search never expands it (the final step, or a
stop string that ends it) has no hidden state; the streaming monitor still judges the committed text.
If every live beam is flagged and no finished beam is left, the search ends closed: it commits
nothing more and stops with :data:`FLAGGED` as its stop reason (the guarded loop blocks on it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from saffron_runtime.cache import TrieNode

FLAGGED = "every live beam was flagged by the monitor"
"""``SearchStats.stop_reason`` of a search that ended because the monitor flagged every beam."""


class BeamMonitor(Protocol):
    """Scores beams from the hidden states on their policy trie nodes."""

    def start(self) -> object:
        """The rule state of the root (an empty response)."""
        ...

    def advance(
        self, states: Sequence[object], nodes: Sequence[TrieNode]
    ) -> tuple[list[object], list[bool]]:
        """Each beam's state after its newest token (``nodes[i]``, whose ``hidden`` the forward just
        kept, extends a beam whose state was ``states[i]``), and whether its rule fired."""
        ...
