"""Errors over HTTP (router/http/problems.py): every reason maps to a status and OpenAI's error body."""

from __future__ import annotations

import json

import pydantic
import pytest

from router.core import errors
from router.core.errors import ErrorKind, FieldViolation, RouterError
from router.http import problems
from router.http.schemas import ChatRequest, EmbeddingsRequest, RerankRequest


def body_of(response) -> dict:
    return json.loads(response.body)["error"]


@pytest.mark.parametrize("reason", sorted(errors.KINDS))
def test_every_reason_has_a_status_and_a_type(reason):
    error = RouterError(reason, "something")
    response = problems.error_response(error)
    assert response.status_code in (400, 401, 403, 404, 413, 429, 500, 502, 503, 504)
    body = body_of(response)
    assert body["code"] == reason and body["type"] and body["message"] == "something"


def test_the_statuses_clients_act_on():
    cases = {
        errors.MODEL_NOT_FOUND: 404,
        errors.CREDENTIALS_MISSING: 401,
        errors.MODEL_NOT_ALLOWED: 403,
        errors.QUEUE_FULL: 429,
        errors.TENANT_RATE_LIMITED: 429,
        errors.SHUTTING_DOWN: 503,
        errors.DEADLINE_EXPIRED: 504,
        errors.TOO_MANY_CHARACTERS: 413,
        errors.UNSUPPORTED_OPTION: 400,
    }
    assert {reason: problems.status_of(RouterError(reason, "x")) for reason in cases} == cases
    assert {kind for kind in ErrorKind} == set(problems.STATUSES)


def test_a_retry_delay_becomes_retry_after_in_whole_seconds_and_in_milliseconds():
    response = problems.error_response(RouterError(errors.QUEUE_FULL, "busy", retry_after_s=0.25))
    assert response.headers["retry-after"] == "1" and response.headers["retry-after-ms"] == "250"
    response = problems.error_response(RouterError(errors.SHUTTING_DOWN, "bye", retry_after_s=5.0))
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert "retry-after" not in problems.error_response(RouterError(errors.MODEL_NOT_FOUND, "x")).headers


def test_the_param_is_the_first_field_in_the_routes_names():
    error = errors.invalid(errors.INPUT_TOO_LONG, "too long", [FieldViolation("inputs[3]", "512 tokens at most")])
    body = body_of(problems.error_response(error, {"inputs": "input"}))
    assert body["param"] == "input[3]" and "input[3]: 512 tokens at most" in body["message"]


def test_schema_problems_name_the_field_without_pydantics_union_members():
    with pytest.raises(pydantic.ValidationError) as caught:
        EmbeddingsRequest.model_validate_json(b'{"model": "m", "input": [1, "x"]}')
    error = problems.invalid_body(caught.value)
    assert error.reason == errors.INVALID_VALUE
    assert {v.field for v in error.violations} <= {"input", "input[0]", "input[1]"}
    with pytest.raises(pydantic.ValidationError) as caught:
        ChatRequest.model_validate_json(b'{"model": "m", "messages": [{"role": "user", "content": 3}]}')
    assert "messages[0].content" in {v.field for v in problems.invalid_body(caught.value).violations}
    with pytest.raises(pydantic.ValidationError) as caught:
        ChatRequest.model_validate_json(b'{"model": ')
    assert problems.invalid_body(caught.value).reason == errors.MALFORMED_REQUEST


def test_unknown_fields_are_refused_unless_they_ask_for_nothing():
    body = ChatRequest.model_validate_json(
        b'{"model": "m", "messages": [], "logprobs": false, "tools": [], "response_format": null, '
        b'"logit_bias": {"1": 2}}'
    )
    assert body.asked_extras() == ["logit_bias"]
    assert problems.unsupported(body.asked_extras()).violations[0].field == "logit_bias"


def test_rerank_documents_are_strings_or_text_objects():
    body = RerankRequest.model_validate_json(b'{"model": "m", "query": "q", "documents": ["a", {"text": "b"}]}')
    assert body.texts() == ["a", "b"]


def test_an_internal_error_says_nothing_of_its_cause():
    response = problems.internal_response()
    assert response.status_code == 500 and body_of(response) == {
        "message": problems.INTERNAL_MESSAGE,
        "type": "server_error",
        "param": None,
        "code": errors.INTERNAL,
    }
