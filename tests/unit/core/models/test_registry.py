"""The model registry: schedulers survive shard changes, a failed index keeps the models, one bad model
does not take the others down (fake backend, tiny tokenizer: no Triton, no built models)."""

from __future__ import annotations

import pytest

from router.core.errors import ErrorKind, RouterError
from router.core.models.contract import Task
from router.core.models.registry import ModelRegistry
from tests.unit.fakes import IndexBackend, description, write_tokenizer


@pytest.fixture
def repository(tmp_path):
    for name in ("good", "other"):
        write_tokenizer(tmp_path / name / "tokenizer.json")
    return tmp_path


async def test_a_shard_coming_or_going_keeps_the_models_scheduler(repository):
    backend = IndexBackend([description("good", served_by=("shard-a", "shard-b"))])
    registry = ModelRegistry(backend, repository)
    await registry.refresh()
    scheduler = registry.get("good", Task.EMBED).scheduler
    backend.descriptions = [description("good", served_by=("shard-a",))]
    await registry.refresh()
    served = registry.get("good", Task.EMBED)
    assert served.scheduler is scheduler  # queue, drain rate and calibration kept
    assert served.served_by == ("shard-a",)


async def test_a_failed_index_keeps_the_last_known_models_and_unknown_names_are_retryable(repository):
    backend = IndexBackend([description("good")])
    registry = ModelRegistry(backend, repository)
    await registry.refresh()
    backend.index_down = True
    await registry.refresh()
    assert registry.get("good", Task.EMBED).contract.name == "good"  # still served
    with pytest.raises(RouterError) as caught:
        registry.get("new-model", Task.EMBED)
    assert caught.value.kind is ErrorKind.BACKEND_UNAVAILABLE and caught.value.retry_after_s
    backend.index_down = False
    await registry.refresh()
    with pytest.raises(RouterError) as caught:
        registry.get("new-model", Task.EMBED)
    assert caught.value.kind is ErrorKind.NOT_FOUND


async def test_one_bad_model_is_reported_and_the_others_are_served(repository):
    backend = IndexBackend([description("good"), description("broken", pooling="sideways")])
    registry = ModelRegistry(backend, repository)
    await registry.refresh()
    assert [m.contract.name for m in registry.models()] == ["good"]
    assert "pooling" in registry.problems["broken"]
    assert registry.health() == {"good": True, "broken": False}
    with pytest.raises(RouterError) as caught:
        registry.get("broken", Task.EMBED)
    assert caught.value.reason == "MODEL_UNUSABLE" and caught.value.kind is ErrorKind.NOT_READY


async def test_the_pad_id_comes_from_the_tokenizer(repository, tmp_path):
    write_tokenizer(repository / "nopad" / "tokenizer.json", pad=None)
    backend = IndexBackend([description("good"), description("nopad"), description("other", pad_token="[SEP]")])
    registry = ModelRegistry(backend, repository)
    await registry.refresh()
    assert registry.get("good", Task.EMBED).contract.pad_id == 1  # [UNK]=0, [PAD]=1
    assert registry.get("other", Task.EMBED).contract.pad_id == 3  # named in the config
    assert "pad token" in registry.problems["nopad"]


async def test_an_echoed_model_name_is_cut():
    registry = ModelRegistry(IndexBackend([]), None)
    await registry.refresh()
    with pytest.raises(RouterError) as caught:
        registry.get("m" * 100_000, Task.EMBED)
    assert len(caught.value.message) < 300 and "100000 characters" in caught.value.message
    assert all(len(v) <= 100 for v in caught.value.metadata.values())


async def test_work_left_for_a_version_unloaded_everywhere_runs_on_the_next_version(repository):
    import asyncio
    import dataclasses

    import numpy as np

    from router.core import errors
    from router.core.backend import Answer
    from router.core.text.windows import Window

    class RollingBackend(IndexBackend):
        """Answers only the version it holds; the one before is gone."""

        held = "1"

        async def infer(self, contract, rows, timeout_s, priority=0):
            if self.gate is not None:
                await self.gate.wait()
            if contract.version != self.held:
                raise RouterError(errors.MODEL_VERSION_GONE, "gone", retry_after_s=1)
            out, shard = await super().infer(contract, rows, timeout_s)
            return Answer(out + float(contract.version) * 1000, shard)  # tells the versions apart

    backend = RollingBackend([description("good")])
    registry = ModelRegistry(backend, repository)
    await registry.refresh()
    old = registry.get("good", Task.EMBED).scheduler
    backend.gate = asyncio.Event()  # hold the old version's work in flight
    window = Window(np.array([2, 5, 3], dtype=np.int64), None, 0, 3)
    pending = asyncio.create_task(old.run([window]))
    pinned = asyncio.create_task(old.run([window], pinned=True))  # its caller named version 1
    await asyncio.sleep(0.01)
    backend.descriptions = [dataclasses.replace(description("good"), version="2")]
    await registry.refresh()
    new = registry.get("good", Task.EMBED).scheduler
    assert new is not old and old.successor is new
    backend.held = "2"  # version 1 unloaded everywhere
    backend.gate.set()
    rows, ticket = await pending
    assert rows[0][0] == 2000 + 10  # answered by version 2, not failed
    assert ticket.handed_to == "2"  # and the response will say so
    with pytest.raises(RouterError) as caught:  # version 1's answer or none
        await pinned
    assert caught.value.reason == errors.MODEL_VERSION_GONE


async def test_a_new_version_with_another_tokenizer_gets_no_work_handed_over(repository):
    import dataclasses

    backend = IndexBackend([description("good")])
    registry = ModelRegistry(backend, repository)
    await registry.refresh()
    old = registry.get("good", Task.EMBED).scheduler
    write_tokenizer(repository / "good" / "tokenizer.json", pad="[PADDING]")
    backend.descriptions = [dataclasses.replace(description("good"), version="2")]
    await registry.refresh()
    assert old.successor is None


async def test_an_input_prefix_too_long_for_the_windows_makes_the_model_unusable(repository):
    prefix = " ".join(["alpha"] * 9)  # 9 tokens; max_sequence_length is 16
    backend = IndexBackend([description("good", input_prefixes=f'{{"query": "{prefix}"}}')])
    registry = ModelRegistry(backend, repository)
    await registry.refresh()
    assert "query prefix has 9 tokens" in registry.problems["good"]


async def test_an_older_version_a_request_names_is_served_by_a_scheduler_of_its_own(repository):
    import dataclasses

    import numpy as np

    from router.core.text.windows import Window

    v1 = description("good", served_by=("shard-a",))
    backend = IndexBackend([v1])
    registry = ModelRegistry(backend, repository)
    await registry.refresh()
    first = registry.get("good", Task.EMBED)
    # Version 2 rolls out on shard-b; shard-a still holds version 1.
    v2 = dataclasses.replace(v1, version="2", served_by=("shard-b",), versions=("2", "1"))
    backend.descriptions = [dataclasses.replace(v2, older=(dataclasses.replace(v1, versions=("2", "1")),))]
    await registry.refresh()
    newest = registry.get("good", Task.EMBED)
    assert newest.contract.version == "2" and newest is not first
    pinned = registry.get("good", Task.EMBED, "1")
    assert pinned is first  # the version's queue and calibration go on serving who names it
    assert pinned.contract.version == "1" and pinned.served_by == ("shard-a",)
    assert registry.get("good", Task.EMBED, "2") is newest

    window = Window(np.array([2, 5], dtype=np.int64), None, 0, 2)
    await pinned.scheduler.run([window], pinned=True)
    await newest.scheduler.run([window])
    assert [contract.version for contract, _ in backend.calls] == ["1", "2"]

    with pytest.raises(RouterError) as caught:
        registry.get("good", Task.EMBED, "3")
    assert caught.value.reason == "MODEL_VERSION_NOT_FOUND" and "hold 2, 1" in caught.value.message

    backend.descriptions = [v2]  # version 1 unloaded everywhere
    await registry.refresh()
    with pytest.raises(RouterError) as caught:
        registry.get("good", Task.EMBED, "1")
    assert caught.value.reason == "MODEL_VERSION_NOT_FOUND"


async def test_an_older_version_is_built_on_first_use_and_kept_while_held(repository):
    import dataclasses

    v1 = description("good")
    v2 = dataclasses.replace(v1, version="2", versions=("2", "1"), older=(v1,))
    registry = ModelRegistry(IndexBackend([v2]), repository)
    await registry.refresh()
    pinned = registry.get("good", Task.EMBED, "1")
    assert pinned.contract.version == "1" and pinned.scheduler is not registry.get("good", Task.EMBED).scheduler
    await registry.refresh()
    assert registry.get("good", Task.EMBED, "1") is pinned
    broken = dataclasses.replace(description("good", pooling="sideways"), version="0")
    registry.backend.descriptions = [dataclasses.replace(v2, older=(v1, broken))]
    await registry.refresh()
    with pytest.raises(RouterError) as caught:
        registry.get("good", Task.EMBED, "0")
    assert caught.value.reason == "MODEL_UNUSABLE"
