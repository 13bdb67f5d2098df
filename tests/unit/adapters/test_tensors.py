"""Token rows become the tensors a model declares, padded with the model's pad id (adapters/triton)."""

from __future__ import annotations

import dataclasses

import numpy as np

from adapters.triton.tensors import input_tensors, pad_rows
from router.core.text.windows import Window
from tests.unit.core.scheduling.test_scheduler import contract


def row(*ids: int, type_ids: tuple[int, ...] | None = None) -> Window:
    return Window(np.array(ids, np.int64), None if type_ids is None else np.array(type_ids, np.int64), 0, 0)


def test_pad_rows_masks_padding():
    ids, mask = pad_rows([np.array([1, 2, 3]), np.array([4])], pad_id=9)
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_declared_inputs_only_and_the_contracts_pad_id():
    embed = dataclasses.replace(contract(), pad_id=7)  # declares input_ids and attention_mask
    tensors = input_tensors(embed, [row(1, 2, 3), row(4)])
    assert set(tensors) == {"input_ids", "attention_mask"}
    assert tensors["input_ids"].tolist() == [[1, 2, 3], [4, 7, 7]]

    pairs = dataclasses.replace(embed, input_names=("input_ids", "attention_mask", "token_type_ids"))
    tensors = input_tensors(pairs, [row(1, 2, 3, type_ids=(0, 1, 1)), row(4, type_ids=(0,))])
    assert tensors["token_type_ids"].tolist() == [[0, 1, 1], [0, 0, 0]]
    assert tensors["input_ids"].dtype == np.int64


def test_generation_tensors_follow_tensorrt_llm():
    from adapters.triton.tensors import generation_tensors
    from router.core.text.prompting import Sampling

    greedy = generation_tensors([5, 6, 7], Sampling(max_tokens=9, end_id=2, stop_ids=(0,), pad_id=0))
    assert greedy["input_ids"].tolist() == [[5, 6, 7]] and greedy["input_ids"].dtype == np.int32
    assert greedy["input_lengths"].tolist() == [[3]] and greedy["request_output_len"].tolist() == [[9]]
    assert greedy["runtime_top_k"].tolist() == [[1]] and "temperature" not in greedy
    assert greedy["end_id"].tolist() == [[2]]
    assert greedy["stop_words_list"].tolist() == [[[0], [1]]]  # ids, then end offsets
    sampled = generation_tensors([5], Sampling(max_tokens=4, temperature=0.7, top_p=0.9, seed=11))
    assert np.allclose(sampled["temperature"], [[0.7]]) and sampled["runtime_top_k"].tolist() == [[0]]
    assert np.allclose(sampled["runtime_top_p"], [[0.9]]) and sampled["random_seed"].dtype == np.uint64


def test_every_generate_option_a_model_may_declare_is_sent_in_its_tensor():
    """A model declaring presence_penalty or frequency_penalty (TensorRT-LLM honours both) gets them; none is
    accepted and then left out. The tensor each option travels in is the one `router check` requires."""
    from adapters.triton.tensor_contract import OPTION_TENSORS
    from adapters.triton.tensors import generation_tensors
    from router.core.models.contract import GENERATE_OPTIONS
    from router.core.text.prompting import Sampling

    sampling = Sampling(
        max_tokens=4,
        temperature=0.5,
        top_p=0.9,
        top_k=3,
        seed=1,
        repetition_penalty=1.1,
        presence_penalty=0.25,
        frequency_penalty=0.5,
    )
    tensors = generation_tensors([5], sampling)
    assert set(OPTION_TENSORS) == GENERATE_OPTIONS
    assert set(OPTION_TENSORS.values()) <= set(tensors)
    assert np.allclose(tensors["presence_penalty"], [[0.25]]) and tensors["frequency_penalty"].dtype == np.float32
