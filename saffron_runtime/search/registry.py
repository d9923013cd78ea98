"""Which class runs ``SearchConfig.method``: a new method is a new module plus one entry here.

``faithful=True`` selects a method's reference-code variant where one exists; methods without one
ignore it.
"""

from __future__ import annotations

from saffron_runtime.search.best_of_n import BestOfN
from saffron_runtime.search.config import SearchConfig
from saffron_runtime.search.greedy import Greedy
from saffron_runtime.search.method import SearchMethod
from saffron_runtime.search.prm_beam import PrmBeam
from saffron_runtime.search.saffron import Saffron
from saffron_runtime.search.saffron_faithful import SaffronFaithful

METHODS: dict[tuple[str, bool], type[SearchMethod]] = {
    ("saffron", False): Saffron,
    ("saffron", True): SaffronFaithful,
    ("best_of_n", False): BestOfN,
    ("prm_beam", False): PrmBeam,
    ("greedy", False): Greedy,
}


def method_class(config: SearchConfig) -> type[SearchMethod]:
    """The class that runs ``config.method`` (its faithful variant when asked and available)."""
    variant = METHODS.get((config.method, config.faithful))
    return variant if variant is not None else METHODS[(config.method, False)]
