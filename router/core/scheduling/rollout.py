"""A rollout's hand-over: a batch whose model version was unloaded everywhere runs on the next version.

When the registry switches a model to a new version with the same tokenizer and tensors, it makes the new
version's scheduler the old one's `successor`. A batch of the old version that then fails with
MODEL_VERSION_GONE is not an error for its callers: each request's sequences in it are sent again,
request by request, through the successor (its cache keys, results and version are the new version's,
and the request's response names that version). A request that pinned the old version gets the error:
its caller wants that version's answer or none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

from router.core import errors
from router.core.errors import RouterError
from router.core.models.contract import ModelContract
from router.core.scheduling.work import Item


class Successor(Protocol):
    """What a hand-over needs of the next version's scheduler."""

    contract: ModelContract

    async def run(
        self, windows: Sequence[Any], tenant: str, deadline: float | None, *, criticality: Any
    ) -> tuple[list, Any]: ...


def hand_over(batch: list[Item], error: BaseException, successor: Successor | None, running: set[asyncio.Task]) -> bool:
    """Rerun the batch's requests on `successor` if `error` says its version is gone (the reruns are
    kept in `running` until done); False when it cannot be handed over."""
    if successor is None or not (isinstance(error, RouterError) and error.reason == errors.MODEL_VERSION_GONE):
        return False
    by_ticket: dict[int, list[Item]] = {}
    for item in batch:
        if item.ticket.pinned:
            item.ticket.fail(error)
            continue
        by_ticket.setdefault(id(item.ticket), []).append(item)
    for items in by_ticket.values():
        task = asyncio.get_running_loop().create_task(_rerun(items, successor))
        running.add(task)
        task.add_done_callback(running.discard)
    return True


async def _rerun(items: list[Item], successor: Successor) -> None:
    ticket = items[0].ticket
    ticket.handed_to = successor.contract.version
    try:
        windows = [item.window for item in items]
        rows, _ = await successor.run(windows, ticket.tenant, ticket.deadline, criticality=ticket.criticality)
    except BaseException as failure:  # the request fails as the new version failed it
        ticket.fail(failure)
        if not isinstance(failure, Exception):
            raise
        return
    for item, row in zip(items, rows, strict=True):
        ticket.deliver(item.index, row)
