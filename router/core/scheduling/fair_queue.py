"""The fair queue: one model's pending sequences from every request, and whose turn is next.

Between tenants, start-time fair queuing in tokens: each waiting tenant has a tag, the virtual time it
joined at plus the tokens dispatched for it since; the smallest tag goes next. A tenant that was idle
joins at the current virtual time (the tag of the tenant served last), so a noisy tenant's backlog never
starves a quiet one: service between them alternates.

Within a tenant, deficit round robin over its requests, with a quantum of tokens (two batches' worth):
a request keeps its place in arrival order until it has had a quantum, then yields to the tenant's next
request. So a tenant's small requests go in arrival order (which keeps their latency low under
overload), and a 5,000-document request yields to a one-text request after at most one quantum. Each
tenant keeps its own request clock, so another tenant's service never moves a request's place.

Above both, criticality (router/core/criticality.py): the request whose turn it is is always one of the
most critical waiting, so critical work goes before default work, and sheddable work only when nothing
else waits. Admission counts for a request only the work that goes before it (`turns(..., up_to=...)`).

Sequences are also kept in one list sorted by length, from which the batch former grows a batch around
the anchor that fairness picks (router/core/scheduling/batching.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from operator import attrgetter

from sortedcontainers import SortedKeyList

from router.core.criticality import Criticality
from router.core.scheduling.work import Item, Ticket

# Tags of tenants with nothing waiting are forgotten past this many (an idle tenant then rejoins at the
# current virtual time, which is where it would rejoin anyway unless it had been served ahead).
_MAX_IDLE_TENANTS = 1024


@dataclass
class _Tenant:
    tag: float
    """Virtual time joined at plus tokens dispatched since (start-time fair queuing)."""
    clock: float = 0.0
    """The tenant's request clock: the tag of its request served last."""
    requests: int = 0
    """Its requests with sequences waiting."""


class FairQueue:
    def __init__(self, quantum: int) -> None:
        self.quantum = quantum
        self.tokens = 0
        """Tokens waiting."""
        self._requests: dict[Ticket, dict[int, Item]] = {}
        self._tenants: dict[str, _Tenant] = {}
        self._clock = 0.0
        self.by_length: SortedKeyList = SortedKeyList(key=attrgetter("length", "seq_no"))

    def __len__(self) -> int:
        """Sequences waiting."""
        return len(self.by_length)

    def __bool__(self) -> bool:
        return bool(self._requests)

    @property
    def requests(self) -> int:
        return len(self._requests)

    def tickets(self) -> Iterator[Ticket]:
        return iter(self._requests)

    def items_of(self, ticket: Ticket) -> list[Item]:
        return list(self._requests.get(ticket, {}).values())

    # What admission reads: queued work counted as it will be served, a turn per request.

    def turn(self, ticket: Ticket) -> int:
        """Tokens a waiting request takes before a newcomer's first turn: at most one quantum."""
        return min(ticket.queued, self.quantum)

    def turns(self, tenant: str | None = None, up_to: Criticality = Criticality.SHEDDABLE) -> int:
        """Queued turns of every waiting request, or of one tenant's; of those at least as critical as
        `up_to` (the work served before a request of that criticality)."""
        return sum(
            self.turn(t) for t in self._requests if (tenant is None or t.tenant == tenant) and t.criticality <= up_to
        )

    def requests_up_to(self, criticality: Criticality) -> int:
        """Waiting requests at least as critical as `criticality`."""
        if criticality == Criticality.SHEDDABLE:
            return len(self._requests)
        return sum(1 for t in self._requests if t.criticality <= criticality)

    def waiting_tenants(self) -> set[str]:
        return {name for name, state in self._tenants.items() if state.requests}

    def requests_of(self, tenant: str) -> int:
        state = self._tenants.get(tenant)
        return state.requests if state else 0

    # Changes.

    def push(self, ticket: Ticket, items: Sequence[Item]) -> None:
        """Queue a request's sequences (in its order) behind its tenant's earlier requests."""
        state = self._tenants.get(ticket.tenant)
        if state is None:
            if len(self._tenants) >= _MAX_IDLE_TENANTS:
                self._forget_idle()
            state = self._tenants[ticket.tenant] = _Tenant(tag=self._clock, clock=0.0)
        elif not state.requests:
            state.tag = max(state.tag, self._clock)
        state.requests += 1
        ticket.start = state.clock
        self._requests[ticket] = {item.seq_no: item for item in items}
        self.by_length.update(items)
        ticket.queued = sum(item.length for item in items)
        self.tokens += ticket.queued

    def anchor(self) -> Item:
        """The oldest sequence of the request whose turn it is; moves the virtual clocks to it."""
        best: tuple | None = None
        for ticket in self._requests:
            state = self._tenants[ticket.tenant]
            key = (ticket.criticality, state.tag, self._tag(ticket), ticket.submitted)
            if best is None or key < best[0]:
                best = (key, ticket)
        assert best is not None, "anchor() on an empty queue"
        ticket = best[1]
        state = self._tenants[ticket.tenant]
        self._clock = max(self._clock, state.tag)
        state.clock = max(state.clock, self._tag(ticket))
        return next(iter(self._requests[ticket].values()))

    def take(self, low: int, high: int) -> list[Item]:
        """Remove positions [low, high) of `by_length` as the next batch, charging each to its request
        and tenant."""
        batch = list(self.by_length.islice(low, high))
        del self.by_length[low:high]
        for item in batch:
            self._serve(item)
        return batch

    def take_items(self, items: Sequence[Item]) -> list[Item]:
        """Remove these queued items as the next batch (`take` for items not side by side in length)."""
        for item in items:
            self.by_length.remove(item)
            self._serve(item)
        return list(items)

    def _serve(self, item: Item) -> None:
        """An item left in a batch: charge it to its request and tenant."""
        ticket = item.ticket
        self._remove(item)
        ticket.served += item.length
        self._tenants[ticket.tenant].tag += item.length

    def withdraw(self, items: Iterable[Item]) -> None:
        """Drop queued sequences that will not be served (their request failed, expired or left)."""
        for item in items:
            queue = self._requests.get(item.ticket)
            if queue is not None and item.seq_no in queue:
                self.by_length.remove(item)
                self._remove(item)

    def _remove(self, item: Item) -> None:
        ticket = item.ticket
        queue = self._requests[ticket]
        del queue[item.seq_no]
        ticket.queued -= item.length
        self.tokens -= item.length
        if not queue:
            del self._requests[ticket]
            self._tenants[ticket.tenant].requests -= 1

    def _tag(self, ticket: Ticket) -> float:
        """A request's tag moves only in whole quanta: until it has had one it keeps its place."""
        return ticket.start + self.quantum * (ticket.served // self.quantum)

    def _forget_idle(self) -> None:
        self._tenants = {name: state for name, state in self._tenants.items() if state.requests}
