"""Generate: time to first token and tokens/s for 1 and 8 concurrent streams, through the router and
straight to Triton, in one run (SmolLM2-135M-Instruct on the CPU, in-flight batching in the model).

Both paths do the same work per stream: render the chat with the model's template, tokenize, stream
greedy tokens (the same tensors, built by the adapter's code), decode them to text. Each path runs the
same prompts; the paths take turns prompt by prompt so both see the same machine. Targets: 8 streams give at
least 2x the tokens/s of one and no stream starves (the slowest stream's rate against the fastest's);
the router adds at most 2 ms to the time to first token and keeps at least 0.95 of the direct tokens/s.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import grpc
import tritonclient.grpc.aio as triton_grpc
from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

from adapters.triton.calls import infer_inputs
from adapters.triton.tensors import generation_tensors
from bench.harness import REPOSITORY, PathResult, bar_plot, router_process, say, triton_server, write_report
from router.core.services.types import ChatMessage
from router.core.text.prompting import ChatTemplate, Sampling
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc

MODEL = "smollm2-135m-instruct"
END_IDS = (2, 0)  # <|im_end|>, <|endoftext|>
TOPICS = ["the sea", "mountains", "bread", "trains", "libraries", "rain", "bees", "clocks"]
ROUNDS = 3


def prompts(count: int) -> list[str]:
    return [f"Write a short paragraph about {TOPICS[i % len(TOPICS)]}." for i in range(count)]


class Stream:
    """One stream's measures: when it started, its first text, its end, and its tokens."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.first: float | None = None
        self.ended = 0.0
        self.tokens = 0

    def text(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    @property
    def rate(self) -> float:
        return self.tokens / max(1e-9, self.ended - (self.first or self.started))


async def via_router(stub, prompt: str, max_tokens: int) -> Stream:
    stream = Stream()
    request = pb.GenerateRequest(
        model=MODEL, messages=[pb.ChatMessage(role="user", content=prompt)], max_tokens=max_tokens
    )
    async for response in stub.Generate(request, timeout=300):
        if response.text:
            stream.text()
        if response.finish_reason:
            stream.tokens = response.usage.completion_tokens
    stream.ended = time.perf_counter()
    return stream


class Direct:
    """A careful direct client: the model's template and tokenizer, tritonclient's stream, DecodeStream."""

    def __init__(self, address: str) -> None:
        folder = REPOSITORY / MODEL
        self.client = triton_grpc.InferenceServerClient(address)
        self.template = ChatTemplate((folder / "chat_template.jinja").read_text())
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))

    async def generate(self, prompt: str, max_tokens: int) -> Stream:
        stream = Stream()
        text = self.template.render([ChatMessage("user", prompt)])
        ids = self.tokenizer.encode(text).ids
        sampling = Sampling(max_tokens=max_tokens, end_id=END_IDS[0], stop_ids=END_IDS[1:], pad_id=0)
        inputs = infer_inputs(generation_tensors(ids, sampling))

        async def one():
            yield {"model_name": MODEL, "inputs": inputs}

        decoder = DecodeStream(skip_special_tokens=True)
        async for result, error in self.client.stream_infer(one(), stream_timeout=300):
            if error is not None:
                raise error
            for token in result.as_numpy("output_ids").reshape(-1):
                stream.tokens += 1
                if int(token) in END_IDS:
                    continue
                if decoder.step(self.tokenizer, int(token)):
                    stream.text()
            final = result.get_response().parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                break
        stream.ended = time.perf_counter()
        return stream


async def group(generate, texts: list[str], max_tokens: int) -> tuple[list[Stream], float]:
    """Run these prompts at once; return their streams and the wall time."""
    started = time.perf_counter()
    streams = await asyncio.gather(*(generate(t, max_tokens) for t in texts))
    return list(streams), time.perf_counter() - started


def result(name: str, streams: list[Stream], wall: float) -> PathResult:
    path = PathResult(name, sum(s.tokens for s in streams), wall)
    path.latencies_s = [(s.first or s.ended) - s.started for s in streams]
    rates = [s.rate for s in streams]
    path.extra = {
        "slowest_vs_fastest_stream": min(rates) / max(rates),
        "mean_stream_tokens_per_s": statistics.mean(rates),
    }
    return path


async def run(max_tokens: int) -> list[PathResult]:
    texts = prompts(8)
    with triton_server() as triton, router_process(triton.grpc_address) as target:
        channel = grpc.aio.insecure_channel(target)
        stub = pb_grpc.ModelRouterServiceStub(channel)
        direct = Direct(triton.grpc_address)
        say("warming up both paths")
        for _ in range(2):
            await via_router(stub, texts[0], 8)
            await direct.generate(texts[0], 8)
        paths = {"direct": direct.generate, "router": lambda text, n: via_router(stub, text, n)}
        measured: dict[tuple[str, int], tuple[list[Stream], float]] = {}
        turn = 0
        for round_ in range(ROUNDS):
            for concurrency in (1, 8):
                say(f"  round {round_ + 1}/{ROUNDS}: {concurrency} stream(s) at a time, 8 prompts, paths taking turns")
                for at in range(0, len(texts), concurrency):
                    # The paths take turns group by group, each going first half of the time.
                    turn += 1
                    for path in ("direct", "router") if turn % 2 else ("router", "direct"):
                        streams, wall = await group(paths[path], texts[at : at + concurrency], max_tokens)
                        old_streams, old_wall = measured.get((path, concurrency), ([], 0.0))
                        measured[(path, concurrency)] = (old_streams + streams, old_wall + wall)
        await channel.close()
        await direct.client.close()
    results = []
    for concurrency in (1, 8):
        label = "1 stream" if concurrency == 1 else "8 concurrent streams"
        direct_result = result(f"direct: tritonclient, {label}", *measured[("direct", concurrency)])
        router_result = result(f"router: Generate, {label}", *measured[("router", concurrency)])
        router_result.extra["added_ttft_p50_ms"] = router_result.percentile_ms(50) - direct_result.percentile_ms(50)
        router_result.extra["vs_direct"] = router_result.throughput / direct_result.throughput
        results += [direct_result, router_result]
    one, eight = results[1].throughput, results[3].throughput
    results[3].extra["vs_one_stream"] = eight / one
    results[2].extra["vs_one_stream"] = results[2].throughput / results[0].throughput
    say(f"  router: 8 streams give {eight / one:.2f}x the tokens/s of one")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per stream at most (default 64)")
    args = parser.parse_args(argv)
    say(f"generate: 8 chat prompts, greedy, up to {args.max_tokens} tokens each, 1 and 8 streams at a time")
    results = asyncio.run(run(args.max_tokens))
    write_report(
        "generate",
        "Generate: router vs straight to Triton (SmolLM2-135M-Instruct, CPU, in-flight batching)",
        [
            f"8 chat prompts, greedy, up to {args.max_tokens} tokens each; each path runs them one at a time and "
            f"8 at a time, {ROUNDS} rounds; the paths take turns prompt by prompt (8 at a time: group by group), "
            "each going first half of the time. items = tokens generated; items/s = tokens/s.",
            "p50/p99 = time to first text. slowest_vs_fastest_stream: the slowest stream's tokens/s over the "
            "fastest's (1.0: no stream starves).",
            "Direct: the model's chat template and tokenizer, the adapter's TensorRT-LLM tensors, tritonclient's "
            "stream, tokenizers' DecodeStream. Router: `router serve` as its own process, a grpc.aio client.",
            "Targets: 8 streams >= 2x the tokens/s of 1 (vs_one_stream); router added_ttft_p50_ms <= 2 and "
            "vs_direct >= 0.95.",
        ],
        results,
        baseline=results[0].name,
    )
    bar_plot("generate", "Generate: tokens/s, 1 and 8 streams", results, "tokens/s")


if __name__ == "__main__":
    main()
