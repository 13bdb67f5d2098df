"""Reading a model's contract from its config parameters."""

from __future__ import annotations

import pytest

from router.core.errors import RouterError
from router.core.models.contract import ModelDescription, Task, TensorSpec, Truncation
from router.core.models.contract_reader import is_routed, parse_contract


def description(**parameters: str) -> ModelDescription:
    base = {
        "modelrouter.task": "embed",
        "modelrouter.tokenizer": "tokenizer.json",
        "modelrouter.max_sequence_length": "256",
    }
    base.update({f"modelrouter.{k}": v for k, v in parameters.items()})
    return ModelDescription(
        name="m",
        version="1",
        max_batch_size=32,
        inputs=(TensorSpec("input_ids", "TYPE_INT64", (-1,)), TensorSpec("attention_mask", "TYPE_INT64", (-1,))),
        outputs=(TensorSpec("embedding", "TYPE_FP32", (384,)),),
        parameters={k: v for k, v in base.items() if v is not None},
        served_by=("127.0.0.1:8001",),
    )


def test_defaults():
    contract = parse_contract(description())
    assert contract.task is Task.EMBED
    assert contract.max_sequence_length == 256 and contract.max_batch_size == 32
    assert contract.default_truncation is Truncation.CHUNK and contract.truncations == frozenset(Truncation)
    assert contract.embedding_dimensions == 384 and contract.normalize
    assert contract.wants_attention_mask and not contract.wants_token_type_ids


def test_declared_options():
    contract = parse_contract(
        description(truncations="end,none", default_truncation="NONE", dimensions="128, 256", normalize="false")
    )
    assert contract.truncations == {Truncation.END, Truncation.NONE}
    assert contract.dimensions == (128, 256) and not contract.normalize


@pytest.mark.parametrize(
    "bad",
    [
        {"task": "translate"},
        {"max_sequence_length": "long"},
        {"default_truncation": "MIDDLE"},
        {"truncations": "END", "default_truncation": "CHUNK"},
        {"output": "missing"},
        {"dimensions": "a,b"},
        {"score": "percent"},
        {"input_prefixes": "query: "},
        {"input_prefixes": '{"search": "q: "}'},
        {"input_prefixes": '{"query": 1}'},
        {"quantization_range": "0"},
        {"quantization_range": "inf"},
        {"task": "rerank", "pair_template": "no placeholders"},
        {"task": "rerank", "pair_template": "{document} before {query}"},
        {"task": "rerank", "pair_template": "{query} {document} {query}"},
        {"pair_template": "{query} {document}"},
    ],
)
def test_bad_contract_names_the_problem(bad):
    with pytest.raises(RouterError) as caught:
        parse_contract(description(**bad))
    assert caught.value.reason == "BAD_MODEL_CONTRACT"


def test_score_type_input_prefixes_and_quantization_range():
    plain = parse_contract(description())
    assert plain.score_type == "logit" and plain.input_prefixes == () and plain.quantization_range == 1.0
    declared = parse_contract(
        description(
            score="Probability", input_prefixes='{"query": "query: ", "document": ""}', quantization_range="0.3"
        )
    )
    assert declared.score_type == "probability" and declared.quantization_range == 0.3
    assert declared.prefix("query") == "query: " and declared.prefix("document") == ""


def test_models_without_task_are_not_routed():
    plain = ModelDescription("helper", "1", 0, (), (), {}, ())
    assert not is_routed(plain)


def test_a_pair_template_is_split_around_its_placeholders():
    contract = parse_contract(description(task="rerank", pair_template="Q:\n{query}\nD:\n{document}\nA:"))
    assert contract.pair_template == ("Q:\n", "\nD:\n", "\nA:")
    assert parse_contract(description(task="rerank")).pair_template == ()
