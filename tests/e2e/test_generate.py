"""Generate against a real Triton serving SmolLM2-135M-Instruct (decoupled, in-flight batching)."""

from __future__ import annotations

import re
import threading
import urllib.request

import grpc
import pytest

from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from tests.helpers import GENERATE_MODEL, REPOSITORY, details_of, wait_for

QUESTION = [pb.ChatMessage(role="user", content="What is the capital of France?")]


@pytest.fixture(scope="module")
def llm(stub):
    """The router's stub, once the router serves the generation model."""

    def served() -> bool:
        return GENERATE_MODEL in {m.name for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}

    wait_for(served, "the router to serve the generation model")
    return stub


def generate(stub, **fields) -> tuple[str, pb.GenerateResponse, list[str]]:
    """The whole text, the last response, and the deltas as they came."""
    deltas, last = [], None
    for response in stub.Generate(pb.GenerateRequest(model=GENERATE_MODEL, **fields), timeout=120):
        deltas.append(response.text)
        last = response
    return "".join(deltas), last, deltas


@pytest.fixture(scope="module")
def reference():
    """transformers on the same weights (the float32 model `make models` de-quantized from the GGUF)."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    folder = REPOSITORY / GENERATE_MODEL / "hf"
    return AutoTokenizer.from_pretrained(str(folder)), LlamaForCausalLM.from_pretrained(
        str(folder), dtype=torch.float32
    ).eval()


def test_greedy_output_equals_transformers_token_for_token(llm, reference):
    import torch

    tokenizer, model = reference
    prompt = "The three most important inventions of the nineteenth century were"
    ids = tokenizer(prompt)["input_ids"]
    with torch.no_grad():
        expected = model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[0][len(ids) :].tolist()
    text, last, _ = generate(llm, prompt=prompt, max_tokens=32)
    assert last.usage.prompt_tokens == len(ids)
    assert last.usage.completion_tokens == len(expected) == 32
    assert text == tokenizer.decode(expected, skip_special_tokens=True)
    assert last.finish_reason == pb.FINISH_REASON_LENGTH


def test_a_chat_answer_names_paris_and_ends_at_the_end_token(llm):
    text, last, deltas = generate(llm, messages=QUESTION, max_tokens=64)
    assert "Paris" in text
    assert last.finish_reason == pb.FINISH_REASON_STOP and not last.stop
    assert last.model_version == "1" and last.timing.time_to_first_token.ToNanoseconds() > 0
    assert len([d for d in deltas if d]) > 3  # streamed, not sent in one piece
    assert "<|im_end|>" not in text


def test_the_same_seed_gives_the_same_sampled_text(llm):
    fields = {"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0.9, "top_p": 0.95}
    first, _, _ = generate(llm, seed=1234, **fields)
    again, _, _ = generate(llm, seed=1234, **fields)
    others = {generate(llm, seed=seed, **fields)[0] for seed in (1, 2, 3)}
    assert first == again
    assert others - {first}, "three other seeds all gave the same text: the seed is not used"


def test_stop_strings_match_across_tokens_and_are_never_sent(llm):
    # " of Fr" spans the tokens " of" and " France" of the greedy answer "The capital of France is Paris."
    text, last, _ = generate(llm, messages=QUESTION, max_tokens=64, stop=[" of Fr", "zzz"])
    assert text == "The capital"
    assert last.finish_reason == pb.FINISH_REASON_STOP and last.stop == " of Fr"


def test_an_unknown_model_and_an_encoder_are_refused_clearly(llm):
    with pytest.raises(grpc.RpcError) as caught:
        list(llm.Generate(pb.GenerateRequest(model="no-such-model", prompt="p"), timeout=30))
    assert details_of(caught.value).info.reason == "MODEL_NOT_FOUND"
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as caught:
        list(llm.Generate(pb.GenerateRequest(model="all-minilm-l6-v2", prompt="p"), timeout=30))
    assert details_of(caught.value).info.reason == "WRONG_TASK"


def test_unsupported_options_are_refused_by_name(llm):
    with pytest.raises(grpc.RpcError) as caught:
        generate(llm, prompt="Hello", presence_penalty=0.5, frequency_penalty=0.1)
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.info.reason == "UNSUPPORTED_OPTION"
    assert set(details.fields) == {"presence_penalty", "frequency_penalty"}


def test_a_prompt_over_the_context_is_refused_with_the_numbers(llm):
    with pytest.raises(grpc.RpcError) as caught:
        generate(llm, prompt="Hello there", max_tokens=8192)
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT and details.info.reason == "CONTEXT_TOO_LONG"
    assert details.info.metadata["context"] == "8192" and details.info.metadata["max_tokens"] == "8192"
    assert "at most" in details.fields["max_tokens"]


def test_truncation_start_drops_the_oldest_messages_and_keeps_the_system_one(llm):
    filler = "This sentence is only here to take up room in the conversation. " * 12
    messages = [
        pb.ChatMessage(role="system", content="You answer in one word."),
        pb.ChatMessage(role="user", content=filler),
        pb.ChatMessage(role="assistant", content=filler),
        pb.ChatMessage(role="user", content="What is the capital of France?"),
    ]
    with pytest.raises(grpc.RpcError):
        generate(llm, messages=messages, max_tokens=8100)
    # Cut to fit: a stop on the first space ends it at once, so the test reads the final usage quickly.
    _, last, _ = generate(llm, messages=messages, max_tokens=8100, truncation=pb.TRUNCATION_START, stop=[" ", "."])
    assert last.usage.messages_dropped >= 1
    assert last.usage.prompt_tokens + 8100 <= 8192


def _metric(triton, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{triton.metrics_port}/metrics", timeout=10).read().decode()
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    for line in text.splitlines():
        if line.startswith(name + "{") and all(w in line for w in wanted):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_caller_that_cancels_mid_stream_stops_the_generation_in_triton(llm, triton):
    cancelled_before = _metric(triton, "llm_streams_total", model=GENERATE_MODEL, outcome="cancelled")
    tokens_before = _metric(triton, "llm_generated_tokens_total", model=GENERATE_MODEL)
    request = pb.GenerateRequest(model=GENERATE_MODEL, prompt="Count: one, two, three,", max_tokens=4000)
    call = llm.Generate(request, timeout=120)  # a deadline far past the cancel: a stuck server fails, never hangs
    for _, _ in zip(range(5), call, strict=False):
        pass
    call.cancel()
    wait_for(
        lambda: _metric(triton, "llm_streams_total", model=GENERATE_MODEL, outcome="cancelled") > cancelled_before,
        "Triton's model to count the stream as cancelled",
        timeout_s=30,
    )
    wait_for(lambda: _metric(triton, "llm_running_streams", model=GENERATE_MODEL) == 0, "the batch to empty", 30)
    generated = _metric(triton, "llm_generated_tokens_total", model=GENERATE_MODEL) - tokens_before
    assert generated < 200, f"{generated} tokens generated for a stream cancelled after 5"


def test_a_deadline_that_passes_mid_stream_stops_the_generation_in_triton(llm, triton):
    cancelled_before = _metric(triton, "llm_streams_total", model=GENERATE_MODEL, outcome="cancelled")
    request = pb.GenerateRequest(model=GENERATE_MODEL, prompt="Count: one, two, three,", max_tokens=4000)
    with pytest.raises(grpc.RpcError) as caught:
        for _ in llm.Generate(request, timeout=1.5):
            pass
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(
        lambda: _metric(triton, "llm_streams_total", model=GENERATE_MODEL, outcome="cancelled") > cancelled_before,
        "Triton's model to count the stream as cancelled",
        timeout_s=30,
    )


def test_eight_concurrent_streams_all_finish(llm):
    results: list[tuple[str, pb.GenerateResponse]] = [None] * 8  # type: ignore[list-item]
    prompts = [f"Write one sentence about the number {n}." for n in range(8)]

    def run(i: int) -> None:
        text, last, _ = generate(llm, messages=[pb.ChatMessage(role="user", content=prompts[i])], max_tokens=20)
        results[i] = (text, last)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert all(result is not None for result in results)
    for text, last in results:
        assert last.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
        assert 0 < last.usage.completion_tokens <= 20 and text.strip()
        assert re.search(r"\w", text)


def test_a_client_generated_from_the_protos_alone_streams_an_answer(llm, router_target, tmp_path):
    """What a calling team does: generate stubs from protos/ (nothing of the router's code) and call."""
    import subprocess
    import sys

    from router.settings import PROJECT_ROOT

    protos = PROJECT_ROOT / "protos"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{protos}",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            str(protos / "modelrouter/v1/model_router_service.proto"),
        ],
        check=True,
    )
    client = tmp_path / "client.py"
    client.write_text(
        "import sys, grpc\n"
        "from modelrouter.v1 import model_router_service_pb2 as pb, model_router_service_pb2_grpc as rpc\n"
        "stub = rpc.ModelRouterServiceStub(grpc.insecure_channel(sys.argv[1]))\n"
        "request = pb.GenerateRequest(model=sys.argv[2], max_tokens=32,\n"
        "    messages=[pb.ChatMessage(role='user', content='What is the capital of France?')])\n"
        "for reply in stub.Generate(request, timeout=120):\n"
        "    print(reply.text, end='', flush=True)\n"
        "print()\nprint(pb.FinishReason.Name(reply.finish_reason))\n"
    )
    done = subprocess.run(
        [sys.executable, str(client), router_target, GENERATE_MODEL],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    answer, reason = done.stdout.strip().rsplit("\n", 1)
    assert "Paris" in answer and reason == "FINISH_REASON_STOP"


def test_a_long_prompt_joins_in_chunks_without_stalling_running_streams(llm):
    """Prefill goes a chunk of the prompt at a time between decode steps: a running stream keeps getting
    tokens while a 1,800-token prompt is being read (counted, not timed)."""
    import time

    arrivals: list[float] = []
    running = llm.Generate(
        pb.GenerateRequest(model=GENERATE_MODEL, prompt="1, 2, 3, 4, 5,", max_tokens=400), timeout=300
    )

    def read() -> None:
        try:
            for reply in running:
                if reply.text:
                    arrivals.append(time.monotonic())
        except grpc.RpcError as error:  # the test cancels the stream once it has what it counts
            if error.code() != grpc.StatusCode.CANCELLED:
                raise

    reader = threading.Thread(target=read)
    reader.start()
    wait_for(lambda: len(arrivals) >= 2, "the running stream's first tokens", 60)
    joined = time.monotonic()
    long_prompt = pb.GenerateRequest(model=GENERATE_MODEL, prompt="word " * 1800, max_tokens=1)
    first = next(iter(llm.Generate(long_prompt, timeout=300)))
    answered = time.monotonic()
    running.cancel()
    reader.join(timeout=30)
    during = [t for t in arrivals if joined < t < answered]
    assert first.text or first.finish_reason
    # About one token per chunk (1,800 / 256: 8 here); read in one piece, the prompt let 2 through.
    assert len(during) >= 5, f"{len(during)} tokens of the running stream while the long prompt was read"
