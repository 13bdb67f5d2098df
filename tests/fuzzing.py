"""Hypothesis strategies for any request of the router's API, built from the proto descriptors.

Requests are built as messages of a mirror of the API in which every string field is `bytes` (same field
numbers, same wire format), so a strategy can send what no generated client would: invalid UTF-8, lone
surrogates, overlong encodings, NULs, beside ordinary and huge text. Numbers cover their whole wire range
(negative, huge, NaN and infinities); enums include values the API does not define; repeated fields may
be huge; the `model` field names real models, made-up ones and garbage.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, duration_pb2, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["ModelRouterService"]
ALL_MODELS = ["all-minilm-l6-v2", "minilm-reranker", "smollm2-135m-instruct", "no-such-model", ""]
WORDS = ["the", "fox", "router", "model", "jumps", "over", "lazy", "dog", "token", "batch", "über", "数据"]
BAD_UTF8 = [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80abc", b"ab\xe2\x82", b"\x00"]
INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _mirror_pool() -> descriptor_pool.DescriptorPool:
    api = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(api)

    def to_bytes(messages) -> None:
        for message in messages:
            for field in message.field:
                if field.type == descriptor_pb2.FieldDescriptorProto.TYPE_STRING:
                    field.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
            to_bytes(message.nested_type)

    to_bytes(api.message_type)
    pool = descriptor_pool.DescriptorPool()
    duration = descriptor_pb2.FileDescriptorProto()
    duration_pb2.DESCRIPTOR.CopyToProto(duration)
    pool.Add(duration)
    pool.Add(api)
    return pool


_POOL = _mirror_pool()


def mirror_class(descriptor: Descriptor):
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(descriptor.full_name))


def sane_text(max_chars: int) -> st.SearchStrategy[bytes]:
    words = st.lists(st.sampled_from(WORDS), min_size=1, max_size=max_chars // 6).map(" ".join)
    return st.one_of(words, st.text(min_size=1, max_size=max_chars)).map(lambda t: t.encode("utf-8"))


def wild_text(max_chars: int) -> st.SearchStrategy[bytes]:
    ordinary = st.text(max_size=max_chars).map(lambda t: t.encode("utf-8"))
    broken = st.lists(st.one_of(st.sampled_from(BAD_UTF8), ordinary), min_size=1, max_size=4).map(b"".join)
    huge = st.sampled_from([b"x" * 30_000, "\u00e9\u6f22\U0001f600".encode() * 10_000, b"word " * 6_000])
    return st.one_of(ordinary, broken, huge, st.binary(max_size=64), st.just(b""))


def request_of(descriptor: Descriptor, models: list[str], max_repeated: int) -> st.SearchStrategy:
    """A mirror message of `descriptor`'s type (serialize it and send the bytes). `models` are the ones
    that serve the method: sane requests name one, so they get past the first checks; in the others each
    field is mostly sane and sometimes wild, so a request is wrong in one place or a few."""
    return _message(descriptor, models, max_repeated, depth=0)


def _message(descriptor: Descriptor, models: list[str], max_repeated: int, depth: int) -> st.SearchStrategy:
    cls = mirror_class(descriptor)
    sane_fields, mixed_fields = {}, {}
    for field in descriptor.fields:
        sane, wild = _value(field, models, max_repeated, depth)
        if field.is_repeated:
            # A few of anything, or ten thousand of one small value (a huge list, not a huge message).
            many = st.builds(lambda item: [item] * 10_000, _small(field))
            sane, wild = (
                st.lists(sane, min_size=1, max_size=max_repeated),
                st.one_of(st.lists(st.one_of(sane, wild), max_size=max_repeated), many),
            )
        required = field.name in ("model", "name", "request", "inputs") and depth <= 1
        sane_fields[field.name] = sane if required else st.one_of(st.none(), sane)
        mixed_fields[field.name] = st.one_of(st.none(), sane, sane, sane, wild)

    def build(values: dict) -> object:
        message = cls()
        for name, value in values.items():
            if value is None:
                continue
            target = getattr(message, name)
            field = descriptor.fields_by_name[name]
            if field.is_repeated:
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    for item in value:
                        target.add().CopyFrom(item)
                else:
                    target.extend(value)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                target.CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    # Half the requests are sane throughout, so they reach tokenizing, batching and the model; the other
    # half may be wrong in any field.
    return st.one_of(st.fixed_dictionaries(sane_fields), st.fixed_dictionaries(mixed_fields)).map(build)


def _small(field: FieldDescriptor) -> st.SearchStrategy:
    if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        return st.sampled_from([b"x", b"", b"\xff", "\u00e9".encode()])
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return st.just(mirror_class(field.message_type)())
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return st.just(1.0)
    return st.just(1)


def _value(field: FieldDescriptor, models: list[str], max_repeated: int, depth: int) -> tuple:
    """(sane, wild) strategies for one value of the field."""
    kind = field.type
    # `model` at the top, or in EmbedStreamRequest's request; GetModel's `name`.
    if (
        field.name == "model" and depth <= 1 or field.name == "name" and depth == 0
    ) and kind == FieldDescriptor.TYPE_STRING:
        others = st.sampled_from(ALL_MODELS).map(str.encode)
        return st.sampled_from(models).map(str.encode), st.one_of(others, wild_text(200))
    if field.name in ("model_version", "page_token") and kind == FieldDescriptor.TYPE_STRING:
        # Sane: what a caller passes (nothing, or the version served); wild: anything.
        return st.sampled_from([b"", b"1"] if field.name == "model_version" else [b""]), wild_text(200)
    if kind in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        return sane_text(300), wild_text(300)
    if kind in INT_RANGES:
        low, high = INT_RANGES[kind]
        return st.integers(1, 64), st.one_of(
            st.integers(max(low, -3), 3000), st.integers(low, high), st.sampled_from([low, high])
        )
    if kind == FieldDescriptor.TYPE_ENUM:
        defined = [v.number for v in field.enum_type.values]
        if field.name == "input_type":  # the test models declare no input types: sane is unspecified
            defined = [0]
        return st.sampled_from(defined), st.integers(-(2**31), 2**31 - 1)
    if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        width = 32 if kind == FieldDescriptor.TYPE_FLOAT else 64
        return st.floats(0, 2, width=width), st.floats(width=width)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans(), st.booleans()
    if kind == FieldDescriptor.TYPE_MESSAGE:
        if depth >= 3:
            empty = st.just(mirror_class(field.message_type)())
            return empty, empty
        nested = _message(field.message_type, models, max_repeated, depth + 1)
        return nested, nested
    raise NotImplementedError(f"{field.full_name}: type {kind}")
