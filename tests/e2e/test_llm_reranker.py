"""An LLM as a reranker (SmolLM2's yes/no judgement) through the same Rerank RPC as the cross-encoder."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from tests.helpers import LLM_RERANK_MODEL, REPOSITORY

QUERY = "What is the capital of France?"
ON_TOPIC = "Paris is the capital and largest city of France."
OFF_TOPIC = "Bananas are rich in potassium."
TEMPLATE = (
    "<|im_start|>user\nQuestion:\n{query}\n\nText:\n{document}\n\n"
    "Does the text answer the question? Answer yes or no.<|im_end|>\n<|im_start|>assistant\n"
)


def rerank(stub, query, documents, **fields) -> pb.RerankResponse:
    request = pb.RerankRequest(model=LLM_RERANK_MODEL, query=query, documents=documents, **fields)
    return stub.Rerank(request, timeout=300)


def test_the_model_says_what_its_scores_are(stub):
    info = stub.GetModel(pb.GetModelRequest(name=LLM_RERANK_MODEL)).model
    assert info.task == pb.TASK_RERANK
    assert info.score_type == pb.SCORE_TYPE_PROBABILITY
    assert info.max_sequence_length == 512 and info.max_query_tokens == 64


def test_an_on_topic_document_outranks_an_off_topic_one(stub):
    reply = rerank(stub, QUERY, [OFF_TOPIC, ON_TOPIC])
    assert [r.index for r in reply.results] == [1, 0]
    for result in reply.results:
        assert 0.0 <= result.score <= 1.0


def test_scores_are_the_judgement_of_the_whole_prompt_run_directly(stub):
    """The router's prompt, tokenized piece by piece, equals the template filled in and tokenized whole,
    and its score is the model's, run here with onnxruntime on that prompt."""
    documents = [ON_TOPIC, OFF_TOPIC, "Die Hauptstadt von Frankreich ist Paris. Ça va?"]
    reply = rerank(stub, QUERY, documents)
    model_dir = REPOSITORY / LLM_RERANK_MODEL
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    for result in reply.results:
        ids = tokenizer.encode(TEMPLATE.format(query=QUERY, document=documents[result.index])).ids
        feeds = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64)}
        direct = float(session.run(None, feeds)[0][0, 0])
        assert abs(result.score - direct) <= 1e-4, (result.index, result.score, direct)
        assert result.usage.tokens == len(ids)


def test_a_long_document_is_chunked_and_scored_by_its_best_window(stub):
    """Each window is the template around the query and a 32-token-overlapping slice of the document, and
    the document's score is its best window's: checked against every window run directly. (Which window
    wins is the model's judgement; a 135M model is no good judge of long, repetitive text, so the test
    does not ask it to find the needle.)"""
    long_document = " ".join([OFF_TOPIC] * 80 + [ON_TOPIC] + [OFF_TOPIC] * 80)  # about 1,100 tokens
    reply = rerank(stub, QUERY, [OFF_TOPIC, long_document])
    result = next(r for r in reply.results if r.index == 1)
    assert reply.usage.inputs_chunked == 1 and result.usage.windows >= 3

    model_dir = REPOSITORY / LLM_RERANK_MODEL
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    head, rest = TEMPLATE.split("{query}")
    middle, tail = rest.split("{document}")

    def ids(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids

    frame = len(ids(head)) + len(ids(QUERY)) + len(ids(middle)) + len(ids(tail))
    document = tokenizer.encode(long_document, add_special_tokens=False)
    document.truncate(512 - frame, stride=32)
    pieces = [document, *document.overflowing]
    assert len(pieces) == result.usage.windows
    scores = []
    for piece in pieces:
        prompt = ids(head) + ids(QUERY) + ids(middle) + piece.ids + ids(tail)
        assert len(prompt) <= 512
        feeds = {"input_ids": np.array([prompt], np.int64), "attention_mask": np.ones((1, len(prompt)), np.int64)}
        scores.append(float(session.run(None, feeds)[0][0, 0]))
    best = int(np.argmax(scores))
    assert abs(result.score - scores[best]) <= 1e-4, (result.score, scores)
    assert (result.best_window_start, result.best_window_end) == (
        pieces[best].offsets[0][0],
        pieces[best].offsets[-1][1],
    )
