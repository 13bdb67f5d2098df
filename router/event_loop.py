"""The event loop the router runs on: uvloop where it is installed, else asyncio's own.

uvloop (libuv under asyncio's interface) runs the same code with less CPU per call and answers sooner
(bench/FINDINGS.md, The overhead of one call). The `event_loop` setting picks (`auto`: uvloop when
importable), as KServe's `--event-loop` does: `asyncio` is the way back should a deployment meet a
problem in uvloop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

Choice = Literal["auto", "asyncio", "uvloop"]
T = TypeVar("T")


def loop_factory(choice: Choice) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What makes the loop for `choice`: None for asyncio's default. `uvloop` without uvloop installed
    raises ImportError; `auto` falls back to asyncio."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], choice: Choice) -> T:
    """`asyncio.run(main)` on the chosen loop."""
    try:
        factory = loop_factory(choice)
    except ImportError:
        main.close()  # never started: no "never awaited" warning on top of the error
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
