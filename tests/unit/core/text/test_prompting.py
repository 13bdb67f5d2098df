"""Generate's checks before the model: options, values, chat template, context guard, stop strings."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.core.errors import RouterError
from router.core.models.contract import ModelContract, Task, Truncation
from router.core.services.types import ChatMessage, GenerateRequest
from router.core.text.prompting import ChatTemplate, StopMatcher, check_request, fit_context

CONTRACT = ModelContract(
    name="llm",
    version="1",
    task=Task.GENERATE,
    tokenizer_file="tokenizer.json",
    max_sequence_length=100,
    max_batch_size=8,
    input_names=("input_ids",),
    output_name="output_ids",
    output_dims=(-1, -1),
    default_truncation=Truncation.NONE,
    truncations=frozenset({Truncation.NONE, Truncation.START}),
    pooling="mean",
    normalize=False,
    dimensions=(),
    chat_template_file="chat_template.jinja",
    end_tokens=("<end>",),
    generate_options=frozenset({"temperature", "top_p", "seed"}),
)
TEMPLATE = ChatTemplate(
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def words(text: str) -> list[int]:
    """A stand-in tokenizer: one token per word."""
    return list(range(len(text.split())))


def refused(request: GenerateRequest, contract: ModelContract = CONTRACT) -> RouterError:
    with pytest.raises(RouterError) as caught:
        check_request(contract, request)
    return caught.value


def test_an_option_the_model_does_not_declare_is_refused_by_name():
    error = refused(GenerateRequest("llm", prompt="hi", top_k=5, presence_penalty=0.1, temperature=0.5))
    assert error.reason == "UNSUPPORTED_OPTION"
    assert [v.field for v in error.violations] == ["presence_penalty", "top_k"]
    check_request(CONTRACT, GenerateRequest("llm", prompt="hi", temperature=0.5, top_p=0.9, seed=3))


def test_values_out_of_range_and_bad_shapes_are_each_named():
    error = refused(
        GenerateRequest(
            "llm",
            prompt="hi",
            messages=(ChatMessage("robot", "x"),),
            temperature=float("nan"),
            top_p=0.0,
            max_tokens=0,
            stop=("",) + ("s",) * 20,
            truncation=Truncation.CHUNK,
        )
    )
    fields = {v.field for v in error.violations}
    assert {"prompt", "messages[0].role", "temperature", "top_p", "max_tokens", "stop", "stop[0]"} <= fields
    assert "truncation" in fields


def test_messages_need_a_chat_template():
    error = refused(
        GenerateRequest("llm", messages=(ChatMessage("user", "hi"),)),
        dataclasses.replace(CONTRACT, chat_template_file=None),
    )
    assert [v.field for v in error.violations] == ["messages"]


def test_the_context_guard_refuses_with_the_numbers_by_default():
    request = GenerateRequest("llm", prompt="word " * 60, max_tokens=50)
    with pytest.raises(RouterError) as caught:
        fit_context(request, 100, words, TEMPLATE)
    assert caught.value.reason == "CONTEXT_TOO_LONG"
    assert caught.value.metadata == {"prompt_tokens": "60", "max_tokens": "50", "context": "100"}
    assert "at most 40 are left" in caught.value.violations[1].description


def test_unset_max_tokens_takes_what_is_left_of_the_context():
    prompt = fit_context(GenerateRequest("llm", prompt="word " * 60), 100, words, TEMPLATE)
    assert prompt.max_tokens == 40 and len(prompt.ids) == 60


def test_start_truncation_cuts_a_plain_prompt_from_the_left():
    request = GenerateRequest("llm", prompt="word " * 60, max_tokens=50, truncation=Truncation.START)
    prompt = fit_context(request, 100, words, TEMPLATE)
    assert len(prompt.ids) == 50 and prompt.dropped_tokens == 10 and prompt.ids[0] == 10


def test_start_truncation_drops_the_oldest_messages_but_keeps_the_system_one():
    messages = (
        ChatMessage("system", "be brief"),
        ChatMessage("user", "old " * 60),
        ChatMessage("assistant", "older " * 60),
        ChatMessage("user", "the question"),
    )
    request = GenerateRequest("llm", messages=messages, max_tokens=50, truncation=Truncation.START)
    prompt = fit_context(request, 100, words, TEMPLATE)  # 50 left: the old turns must both go
    assert prompt.dropped_messages == 2
    assert len(prompt.ids) == len(TEMPLATE.render([messages[0], messages[3]]).split())


def test_the_chat_template_runs_in_a_sandbox():
    hostile = ChatTemplate("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(Exception, match="unsafe|not safely|access"):
        hostile.render([ChatMessage("user", "hi")])


def feed_all(matcher: StopMatcher, pieces: list[str]) -> tuple[str, str | None]:
    sent = []
    for piece in pieces:
        text, stop = matcher.feed(piece)
        sent.append(text)
        if stop is not None:
            return "".join(sent), stop
    rest, stop = matcher.flush()
    sent.append(rest)
    return "".join(sent), stop


def test_a_stop_string_split_across_tokens_is_matched_and_never_sent():
    matcher = StopMatcher(["END"])
    assert matcher.feed("the E") == ("the ", None)  # "E" might start "END": held back
    assert matcher.feed("N") == ("", None)
    assert matcher.feed("D and more") == ("", "END")


def test_held_text_that_turns_out_not_to_stop_is_sent():
    assert feed_all(StopMatcher(["END"]), ["the E", "N", "d."]) == ("the ENd.", None)


@given(
    st.lists(st.text(alphabet="abc", max_size=4), max_size=12),
    st.lists(st.text(alphabet="abc", min_size=1, max_size=3), min_size=1, max_size=3),
)
def test_stop_matching_equals_cutting_the_whole_text_at_the_first_stop(pieces, stops):
    whole = "".join(pieces)
    found = [(whole.find(s), s) for s in stops if s in whole]
    sent, stop = feed_all(StopMatcher(stops), pieces)
    if not found:
        assert (sent, stop) == (whole, None)
    else:
        at, _ = min(found)
        assert sent == whole[:at] and stop is not None and whole[at:].startswith(stop)
