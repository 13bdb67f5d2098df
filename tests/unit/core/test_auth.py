"""Who is calling, and the tenant a call counts against (router/core/auth.py)."""

from __future__ import annotations

import pytest

from router.core import errors
from router.core.auth import ANONYMOUS, Authenticator, Principal, hash_key, new_key
from router.core.errors import ErrorKind, RouterError

SEARCH_KEY, GATEWAY_KEY = new_key(), new_key()
SEARCH = Principal("search", "search", frozenset({"embedder"}), key_sha256=hash_key(SEARCH_KEY))
GATEWAY = Principal("gateway", "gateway", act_for_others=True, key_sha256=hash_key(GATEWAY_KEY))
BATCH = Principal("batch-jobs", "batch", certificate_name="batch.internal")
AUTH = Authenticator([SEARCH, GATEWAY, BATCH])


def refusal(call) -> RouterError:
    with pytest.raises(RouterError) as caught:
        call()
    return caught.value


def test_off_without_principals_and_then_the_tenant_is_trusted():
    caller = Authenticator().authenticate(None, [], "anyone")
    assert caller.principal is ANONYMOUS and caller.tenant == "anyone"


def test_a_key_names_its_principal_and_tenant():
    caller = AUTH.authenticate(SEARCH_KEY, [], None)
    assert caller.principal is SEARCH and caller.tenant == "search"
    assert AUTH.authenticate(SEARCH_KEY, [], "search").tenant == "search"  # its own tenant, named


def test_no_credentials_and_bad_ones_are_unauthenticated():
    missing = refusal(lambda: AUTH.authenticate(None, [], None))
    assert missing.kind is ErrorKind.UNAUTHENTICATED and missing.reason == errors.CREDENTIALS_MISSING
    wrong = refusal(lambda: AUTH.authenticate(SEARCH_KEY + "x", [], None))
    assert wrong.kind is ErrorKind.UNAUTHENTICATED and wrong.reason == errors.CREDENTIALS_INVALID
    assert SEARCH_KEY not in wrong.message
    stranger = refusal(lambda: AUTH.authenticate(None, ["stranger.internal"], None))
    assert stranger.reason == errors.CREDENTIALS_INVALID


def test_a_certificate_name_identifies_a_principal():
    caller = AUTH.authenticate(None, ["something-else", "batch.internal"], None)
    assert caller.principal is BATCH and caller.tenant == "batch"


def test_rotating_tenant_ids_is_refused_unless_acting_for_others_is_allowed():
    denied = refusal(lambda: AUTH.authenticate(SEARCH_KEY, [], "someone-else"))
    assert denied.kind is ErrorKind.PERMISSION_DENIED and denied.reason == errors.TENANT_NOT_ALLOWED
    assert AUTH.authenticate(GATEWAY_KEY, [], "their-caller").tenant == "their-caller"


def test_models_a_principal_may_use():
    caller = AUTH.authenticate(SEARCH_KEY, [], None)
    caller.check_model("embedder")
    denied = refusal(lambda: caller.check_model("reranker"))
    assert denied.kind is ErrorKind.PERMISSION_DENIED and denied.reason == errors.MODEL_NOT_ALLOWED
    AUTH.authenticate(GATEWAY_KEY, [], None).check_model("anything")  # no list: every model


def test_keys_are_random_and_only_their_hash_is_kept():
    assert new_key() != new_key() and len(new_key()) > 40
    assert hash_key(SEARCH_KEY) == SEARCH.key_sha256 and SEARCH_KEY not in repr(AUTH.principals)
