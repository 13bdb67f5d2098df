"""How much a request matters when its model is overloaded (Google's SRE book, "Handling Overload"; the
Inference Extension's objectives). A lower value matters more and is served first."""

from __future__ import annotations

from enum import IntEnum


class Criticality(IntEnum):
    CRITICAL = 0
    """Served before all other work; admitted against critical work alone, up to twice the bounds."""
    DEFAULT = 1
    """Served after critical work; admitted against critical and default work, within the bounds."""
    SHEDDABLE = 2
    """Served last; admitted against all the work queued, within half the bounds: refused first."""

    @property
    def bound_share(self) -> float:
        """The share of the queue bounds work of this criticality (and all that goes before it) may fill."""
        return _BOUND_SHARE[self]


_BOUND_SHARE = {Criticality.CRITICAL: 2.0, Criticality.DEFAULT: 1.0, Criticality.SHEDDABLE: 0.5}
