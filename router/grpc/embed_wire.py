"""An EmbedResponse built from its wire form: each Embedding is its row's bytes behind the field's tag and
length, parsed once as a whole (converters.py builds every other message field by field)."""

from __future__ import annotations

import functools

import numpy as np

from router.core.services.types import EmbedResult, InputUsage
from router.core.text.quantize import Encoding
from router.grpc.converters import ENCODING_TO_PB, input_usage_to_pb, timing_to_pb, usage_to_pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb


@functools.lru_cache(maxsize=64)
def _prefix(field: str, size: int) -> bytes:
    """The wire bytes an Embedding puts before `size` bytes of its `values` (packed floats) or `data`
    field: the field's tag and length, taken from the library's own encoding of a zero-filled field."""
    zeros = pb.Embedding(values=[0.0] * (size // 4)) if field == "values" else pb.Embedding(data=bytes(size))
    return zeros.SerializeToString()[:-size]


@functools.lru_cache(maxsize=4096)
def _usage_bytes(usage: InputUsage | None) -> bytes:
    """An Embedding's `usage` on the wire (inputs of a request mostly share a few distinct usages)."""
    return b"" if usage is None else pb.Embedding(usage=input_usage_to_pb(usage)).SerializeToString()


@functools.lru_cache(maxsize=4096)
def _embedding_header(size: int) -> bytes:
    """The wire bytes an EmbedResponse puts before an Embedding of `size` bytes in `embeddings` (the field's
    tag and the length), taken from the library's own encoding of an Embedding of that size."""
    for content in range(size - 2, max(0, size - 12), -1):  # a `data` field: tag, length, content
        filler = pb.Embedding(data=bytes(content))
        if filler.ByteSize() == size:
            return pb.EmbedResponse(embeddings=[filler]).SerializeToString()[:-size]
    raise ValueError(f"no Embedding is {size} bytes long")


def embed_response_to_pb(result: EmbedResult) -> pb.EmbedResponse:
    """The response is parsed from its wire form, which protobuf defines field by field: each Embedding is
    its row's bytes behind the `values` (or `data`) field's tag and length (float components are
    little-endian float32 on the wire, as in numpy's array) followed by its usage; the embeddings follow
    each other, each behind its own tag and length; the other fields come from a message of their own
    (concatenated encodings merge, as protobuf defines). One parse of the whole costs a small part of the
    CPU that building it from Python lists of floats did (a Python float made and read per component)."""
    rows = result.embeddings
    if result.encoding is Encoding.FLOAT:
        rows, field = rows.astype("<f4", copy=False), "values"
    else:
        field = "data"
    data, width = np.ascontiguousarray(rows).tobytes(), rows.shape[1] * rows.itemsize
    prefix = _prefix(field, width)
    parts: list[bytes] = []
    for i, usage in enumerate(result.inputs or [None] * len(rows)):
        tail = _usage_bytes(usage)
        parts += (_embedding_header(len(prefix) + width + len(tail)), prefix, data[i * width : (i + 1) * width], tail)
    rest = pb.EmbedResponse(
        model=result.model,
        usage=usage_to_pb(result.usage),
        timing=timing_to_pb(result.timing),
        model_version=result.version,
        encoding=ENCODING_TO_PB[result.encoding],
        dimensions=result.dimensions,
    )
    parts.append(rest.SerializeToString())
    return pb.EmbedResponse.FromString(b"".join(parts))


def embed_stream_response_to_pb(offset: int, result: EmbedResult) -> pb.EmbedStreamResponse:
    return pb.EmbedStreamResponse(offset=offset, response=embed_response_to_pb(result))
