"""The one request pipeline: Embed and Rerank through it, the contract's score column, shutting down
(fake backend, tiny tokenizer)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from router.core.config import RequestLimits
from router.core.errors import ErrorKind, RouterError
from router.core.models.registry import ModelRegistry
from router.core.services.embed import EmbedService
from router.core.services.pipeline import RequestPipeline
from router.core.services.rerank import RerankService
from router.core.services.types import EmbedRequest, RerankRequest
from tests.unit.fakes import IndexBackend, description, write_tokenizer


@pytest.fixture
async def services(tmp_path):
    for name in ("embedder", "ranker", "classifier"):
        write_tokenizer(tmp_path / name / "tokenizer.json")
    backend = IndexBackend(
        [
            description("embedder", normalize="false"),
            description("ranker", task="rerank", width="1"),
            description("classifier", task="rerank", width="2", score_column="1"),
        ]
    )
    registry = ModelRegistry(backend, tmp_path)
    await registry.refresh()
    pipeline = RequestPipeline(registry, RequestLimits())
    return pipeline, EmbedService(pipeline), RerankService(pipeline), backend


async def test_embed_and_rerank_share_the_pipeline(services):
    pipeline, embed, rerank, backend = services
    result = await embed.embed(EmbedRequest("embedder", ["alpha beta", "gamma"]))
    assert result.embeddings.shape == (2, 4) and result.usage.sequences == 2
    ranked = await rerank.rerank(RerankRequest("ranker", "query", ["alpha", "document delta"]))
    assert sorted(r.index for r in ranked.results) == [0, 1] and ranked.usage.batches >= 1
    assert pipeline.active == 0


async def test_rerank_reads_the_score_column_the_contract_names(services):
    _, _, rerank, backend = services
    # The fake's rows are [s, ..., s, -s] with s the sum of the window's ids: column 0 ranks by s,
    # column 1 (the classifier's "relevant" logit here) ranks by -s.
    documents = ["alpha", "document document document"]
    by_first = await rerank.rerank(RerankRequest("ranker", "query", documents))
    by_second = await rerank.rerank(RerankRequest("classifier", "query", documents))
    assert [r.index for r in by_first.results] == [1, 0]
    assert [r.index for r in by_second.results] == [0, 1]
    assert by_second.results[0].score < 0


async def test_rows_are_padded_with_the_tokenizers_pad_id(services):
    _, embed, _, backend = services
    await embed.embed(EmbedRequest("embedder", ["alpha beta gamma", "delta"]))
    contract, rows = backend.calls[-1]
    assert contract.pad_id == 1  # the fake tokenizer's [PAD]; the adapter pads with it


async def test_shutting_down_refuses_new_work_and_lets_work_in_flight_finish(services):
    pipeline, embed, _, backend = services
    backend.gate = asyncio.Event()
    inflight = asyncio.create_task(embed.embed(EmbedRequest("embedder", ["alpha"])))
    await asyncio.sleep(0.01)
    assert pipeline.active == 1
    pipeline.close()
    with pytest.raises(RouterError) as caught:
        await embed.embed(EmbedRequest("embedder", ["beta"]))
    assert caught.value.kind is ErrorKind.NOT_READY and caught.value.reason == "SHUTTING_DOWN"
    assert caught.value.retry_after_s
    assert not await pipeline.drain(0.05)  # still in flight: the grace runs out
    backend.gate.set()
    assert await pipeline.drain(5.0)
    result = await inflight
    assert np.isfinite(result.embeddings).all()


async def test_too_much_text_is_refused_before_tokenizing(services, monkeypatch):
    pipeline, _, _, backend = services
    small = RequestPipeline(pipeline.registry, RequestLimits(max_characters=50))
    tokenized = []
    monkeypatch.setattr(
        "router.core.text.tokenize.ModelTokenizer._encode", lambda self, texts: tokenized.append(texts) or []
    )
    calls = len(backend.calls)
    with pytest.raises(RouterError) as caught:
        await EmbedService(small).embed(EmbedRequest("embedder", ["alpha " * 5, "beta " * 8]))
    error = caught.value
    assert error.kind is ErrorKind.INVALID_INPUT and error.reason == "TOO_MANY_CHARACTERS"
    assert error.metadata == {"characters": "70", "max_characters": "50"}
    with pytest.raises(RouterError) as caught:
        await RerankService(small).rerank(RerankRequest("ranker", "q" * 30, ["d" * 30]))
    assert caught.value.reason == "TOO_MANY_CHARACTERS"
    assert not tokenized and len(backend.calls) == calls  # nothing was tokenized or sent


async def test_a_caller_that_goes_away_stops_its_tokenizing_at_the_next_part(services, monkeypatch):
    import threading
    import time

    from router.core.services import pipeline as pipeline_module
    from router.core.text.tokenize import ModelTokenizer

    pipeline, embed, _, backend = services
    parts, started = [], threading.Event()
    real_split = ModelTokenizer.split

    def slow_split(self, texts, *args, **kwargs):
        parts.append(len(texts))
        started.set()
        time.sleep(0.05)
        return real_split(self, texts, *args, **kwargs)

    monkeypatch.setattr(ModelTokenizer, "split", slow_split)
    monkeypatch.setattr(pipeline_module, "TOKENIZE_PART_TEXTS", 10)
    texts = ["alpha beta gamma " * 30] * 100  # 51,000 characters: tokenized in 10 parts of 10 texts
    task = asyncio.create_task(embed.embed(EmbedRequest("embedder", texts)))
    await asyncio.to_thread(started.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.2)  # a part already running finishes in its thread; no other starts
    assert 1 <= len(parts) <= 2 and all(n == 10 for n in parts)
    assert pipeline.active == 0


async def test_big_requests_are_tokenized_in_parts_whole_and_in_order(services, monkeypatch):
    from router.core.services import pipeline as pipeline_module

    _, embed, _, _ = services
    monkeypatch.setattr(pipeline_module, "TOKENIZE_PART_TEXTS", 7)
    texts = [f"alpha {'beta ' * (i % 5)}gamma " * 120 for i in range(30)]
    assert sum(map(len, texts)) > RequestLimits().inline_tokenize_characters  # tokenized in threads, in parts
    parted = await embed.embed(EmbedRequest("embedder", texts))
    monkeypatch.setattr(pipeline_module, "TOKENIZE_PART_TEXTS", 1000)
    whole = await embed.embed(EmbedRequest("embedder", texts))
    assert parted.usage.sequences == whole.usage.sequences
    assert np.allclose(parted.embeddings, whole.embeddings)


async def test_text_waiting_to_be_tokenized_is_bounded(services, monkeypatch):
    import threading

    from router.core.text.tokenize import ModelTokenizer

    pipeline, _, _, _ = services
    bounded = RequestPipeline(pipeline.registry, RequestLimits(max_tokenizing_characters=60_000, tokenizing_threads=1))
    entered, release, real_split = threading.Event(), threading.Event(), ModelTokenizer.split

    def held_split(self, texts, *args, **kwargs):
        if len(texts) > 1:  # the big request's parts wait; the small inline call does not
            entered.set()
            release.wait(5)
        return real_split(self, texts, *args, **kwargs)

    monkeypatch.setattr(ModelTokenizer, "split", held_split)
    texts = ["alpha beta gamma " * 30] * 100  # 51,000 characters
    first = asyncio.create_task(EmbedService(bounded).embed(EmbedRequest("embedder", texts)))
    await asyncio.to_thread(entered.wait, 5)
    assert bounded.tokenizing_characters == 51_000
    with pytest.raises(RouterError) as caught:  # 102,000 would be waiting: refused at once
        await EmbedService(bounded).embed(EmbedRequest("embedder", texts))
    assert caught.value.kind is ErrorKind.OVERLOADED and caught.value.retry_after_s
    small = await EmbedService(bounded).embed(EmbedRequest("embedder", ["alpha"]))  # inline: not counted
    assert small.embeddings.shape[0] == 1
    release.set()
    assert (await first).embeddings.shape[0] == 100
    assert bounded.tokenizing_characters == 0


async def _parts(*parts):
    for part in parts:
        yield part


async def test_a_stream_answers_its_parts_in_order_with_their_offsets(services):
    _, embed, _, backend = services
    parts = [EmbedRequest("embedder", ["alpha"] * n) for n in (3, 1, 2)]
    got = [(offset, result.embeddings.shape[0]) async for offset, result in embed.embed_stream(_parts(*parts))]
    assert got == [(0, 3), (3, 1), (4, 2)]


async def test_a_stream_reads_only_a_few_parts_ahead(services):
    from router.core.services.embed import PARTS_AHEAD

    _, embed, _, backend = services
    backend.gate = asyncio.Event()  # nothing is answered yet
    read = 0

    async def parts():
        nonlocal read
        for _ in range(20):
            read += 1
            yield EmbedRequest("embedder", ["beta"])

    stream = embed.embed_stream(parts())
    first = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.05)
    assert read <= PARTS_AHEAD + 2  # queued, being answered, and one waiting for room
    backend.gate.set()
    await first
    assert len([r async for r in stream]) == 19


async def test_a_part_refused_as_overloaded_waits_and_runs_again(services, monkeypatch):
    _, embed, _, _ = services
    refusals = [RouterError("QUEUE_FULL", "busy", retry_after_s=0.01)] * 2
    real = embed.embed

    async def busy_at_first(request, call):
        if refusals:
            raise refusals.pop()
        return await real(request, call)

    monkeypatch.setattr(embed, "embed", busy_at_first)
    got = [offset async for offset, _ in embed.embed_stream(_parts(EmbedRequest("embedder", ["gamma"])))]
    assert got == [0] and not refusals


async def test_a_failing_part_fails_the_stream_after_the_parts_before(services):
    _, embed, _, _ = services
    parts = [EmbedRequest("embedder", ["alpha"]), EmbedRequest("embedder", [])]
    seen = []
    with pytest.raises(RouterError) as caught:
        async for offset, _ in embed.embed_stream(_parts(*parts)):
            seen.append(offset)
    assert seen == [0] and caught.value.reason == "EMPTY_INPUTS"
    with pytest.raises(RouterError) as caught:  # one model per stream, checked once
        [r async for r in embed.embed_stream(_parts(parts[0], EmbedRequest("other", ["beta"])))]
    assert caught.value.reason == "INVALID_VALUE"
