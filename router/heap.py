"""The serving process's heap, frozen once the router is ready, so the garbage collector stops pausing
the event loop to walk it.

CPython's oldest-generation collection walks every tracked object, and most of them (modules,
classes, protobuf descriptors, the models' contracts) were made at start-up and live as long as the
process: each full collection held the event loop for tens of milliseconds here, and well under one
with the heap frozen (bench/FINDINGS.md, Garbage collection). vLLM and SGLang freeze their servers'
heaps after start-up for the same reason.

Only `router serve` does this: it owns its process. A router started in someone else's process
(`LocalRouter`, in tests and notebooks) leaves that process's heap alone. What is frozen is never
collected as a cycle, so objects made at start-up and dropped later in a reference cycle stay; what
start-up leaves as garbage is collected first.
"""

from __future__ import annotations

import gc

import structlog

log = structlog.get_logger(__name__)


def freeze() -> int:
    """Collect what start-up left behind, then move every object alive into the permanent generation,
    which collections skip. Returns how many objects are frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("heap.frozen", objects=frozen)
    return frozen
