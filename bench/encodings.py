"""Embedding encodings: for 10,000 embeddings of 384 dimensions, the router's encoding (quantize, build the
EmbedResponse, serialize it) plus a Python caller's decoding (parse it, make one numpy matrix of the
vectors), and the bytes on the wire, per form, against today's floats in the same run.

No model server is involved: the vectors are unit vectors drawn at random (their components spread as
all-MiniLM-L6-v2's do, about 0.05), quantized with the range that model declares (0.3). Fidelity is the
mean cosine between each decoded vector and its float original (the binary forms: of the +-1 vector).
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from bench.harness import PathResult, bar_plot, say, write_report
from router.core.services.types import EmbedResult, InputUsage
from router.core.text.quantize import Encoding, decode, encode
from router.grpc.embed_wire import embed_response_to_pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb

COUNT = 10_000
DIMENSIONS = 384
RANGE = 0.3
ROUNDS = 5
DTYPES = {
    Encoding.FLOAT32_BYTES: "<f4",
    Encoding.INT8: np.int8,
    Encoding.UINT8: np.uint8,
    Encoding.BINARY: np.int8,
    Encoding.UBINARY: np.uint8,
}


def _read(reply: pb.EmbedResponse, encoding: Encoding) -> np.ndarray:
    """What a Python caller does: one matrix of the vectors (the byte forms without a per-value step)."""
    if encoding is Encoding.FLOAT:
        return np.array([e.values for e in reply.embeddings], dtype=np.float32)
    return np.frombuffer(b"".join(e.data for e in reply.embeddings), dtype=DTYPES[encoding]).reshape(COUNT, -1)


def _once(vectors: np.ndarray, encoding: Encoding) -> tuple[float, float, int, np.ndarray]:
    usage = [InputUsage(12, False, 1)] * COUNT
    started = time.perf_counter()
    result = EmbedResult("bench", encode(vectors, encoding, RANGE), encoding=encoding, inputs=usage)
    wire = embed_response_to_pb(result).SerializeToString()
    encoded = time.perf_counter()
    rows = _read(pb.EmbedResponse.FromString(wire), encoding)
    decoded = time.perf_counter()
    return encoded - started, decoded - encoded, len(wire), rows


def main(argv: list[str]) -> None:
    del argv
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((COUNT, DIMENSIONS)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    encodings = [Encoding.FLOAT, *DTYPES]
    timings: dict[Encoding, list[tuple[float, float]]] = {e: [] for e in encodings}
    sizes: dict[Encoding, int] = {}
    fidelity: dict[Encoding, float] = {}
    say(f"encodings: {COUNT} embeddings of {DIMENSIONS}, {ROUNDS} rounds, the forms alternating")
    for _ in range(ROUNDS):
        for encoding in encodings:
            encode_s, decode_s, size, rows = _once(vectors, encoding)
            timings[encoding].append((encode_s, decode_s))
            sizes[encoding] = size
            back = decode(rows, encoding, RANGE)
            cosines = (back * vectors).sum(1) / np.linalg.norm(back, axis=1)
            fidelity[encoding] = float(cosines.mean())
    results = []
    for encoding in encodings:
        encode_s = statistics.median(t[0] for t in timings[encoding])
        decode_s = statistics.median(t[1] for t in timings[encoding])
        results.append(
            PathResult(
                encoding.value,
                COUNT,
                encode_s + decode_s,
                extra={
                    "encode_ms": encode_s * 1000,
                    "decode_ms": decode_s * 1000,
                    "wire_MB": sizes[encoding] / 1e6,
                    "wire_vs_float": sizes[encoding] / sizes[Encoding.FLOAT],
                    "mean_cosine": fidelity[encoding],
                },
            )
        )
        say(
            f"  {encoding.value}: encode {encode_s * 1000:.1f} ms + decode {decode_s * 1000:.1f} ms, "
            f"{sizes[encoding] / 1e6:.2f} MB, mean cosine {fidelity[encoding]:.5f}"
        )
    notes = [
        f"{COUNT} unit vectors of {DIMENSIONS} dimensions; int8/uint8 range {RANGE}; medians of {ROUNDS} rounds",
        "wall s = the router's encoding (quantize, EmbedResponse, serialize) + a Python caller's decoding "
        "(parse, one numpy matrix); items/s = embeddings through both per second",
        "mean_cosine: decoded vector against its float original (binary forms: the +-1 vector)",
    ]
    write_report("encodings", "Embedding encodings: time and bytes for 10,000 embeddings", notes, results, "float")
    bar_plot("encodings", "Wire size of 10,000 embeddings (MB)", results, "MB", value="wire_MB")
