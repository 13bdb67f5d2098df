"""Who is calling: principals, their credentials, and the tenant each call counts against.

A principal is an identity the operator declares (settings `principals`): the SHA-256 of an API key the
caller sends as `authorization: Bearer <key>`, and/or a name its mTLS client certificate carries (subject
common name or a subject alternative name). Each principal has a tenant (what fairness and rate limits
key on), the models it may use (all when unset), and two powers: acting for other tenants (a gateway that
forwards its callers' `x-tenant-id`) and seeing internals (admin: shard addresses in ListModels).

With no principals declared, authentication is off (the embedded default on loopback): every call is the
anonymous principal, trusted as the operator, and `x-tenant-id` is trusted as sent. With principals, a
call without credentials gets UNAUTHENTICATED, and `x-tenant-id` counts only when it names the
principal's own tenant or the principal may act for others. Keys are kept only as hashes; a key is a
random string (`router keygen`), so a plain SHA-256 is enough (a slow password hash protects guessable
secrets, which these are not).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from router.core import errors
from router.core.criticality import Criticality
from router.core.errors import RouterError


@dataclass(frozen=True)
class Principal:
    name: str
    tenant: str
    models: frozenset[str] | None = None
    """The models it may use; None: every model."""
    act_for_others: bool = False
    admin: bool = False
    key_sha256: str | None = None
    certificate_name: str | None = None
    max_criticality: Criticality = Criticality.CRITICAL
    """The most its requests may matter under overload (a request asking for more gets this)."""

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


ANONYMOUS = Principal(name="anonymous", tenant="", admin=True)
"""Every caller while authentication is off: trusted as the operator (the loopback default). Declare
principals before the router listens where others can reach it."""


NOBODY = Principal(name="(none)", tenant="", models=frozenset())
"""A handler reached without authentication (never through the server): no models, no internals."""


@dataclass(frozen=True)
class Caller:
    """A call's authenticated identity and the tenant its work counts against."""

    principal: Principal
    tenant: str

    def criticality(self, asked: Criticality) -> Criticality:
        """What a request asking for `asked` gets: at most the principal's cap."""
        return max(asked, self.principal.max_criticality)

    def check_model(self, model: str) -> None:
        if not self.principal.allows(model):
            raise RouterError(
                errors.MODEL_NOT_ALLOWED,
                f"principal {self.principal.name!r} may not use model {errors.echo(model)}",
                metadata={"principal": self.principal.name, "model": errors.clip(model)},
            )


def hash_key(key: str) -> str:
    """The hex SHA-256 of an API key: what settings hold instead of the key."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh API key: 32 random bytes, URL-safe base64, prefixed so it is recognisable in a leak scan."""
    return "mr_" + secrets.token_urlsafe(32)


class Authenticator:
    def __init__(self, principals: Iterable[Principal] = ()) -> None:
        self.principals = list(principals)
        self._by_key: dict[str, Principal] = {}
        self._by_certificate: dict[str, Principal] = {}
        for principal in self.principals:
            if principal.key_sha256:
                self._by_key[principal.key_sha256.lower()] = principal
            if principal.certificate_name:
                self._by_certificate[principal.certificate_name] = principal

    @property
    def enabled(self) -> bool:
        return bool(self.principals)

    def authenticate(self, bearer: str | None, certificate_names: Sequence[str], tenant: str | None) -> Caller:
        """The caller of one call, from its API key (`bearer`, without the `Bearer ` prefix), the names its
        verified client certificate carries, and the tenant it asked for (`x-tenant-id`, or None)."""
        if not self.enabled:
            return Caller(ANONYMOUS, tenant or "")
        principal = self._identify(bearer, certificate_names)
        if not tenant or tenant == principal.tenant:
            return Caller(principal, principal.tenant)
        if principal.act_for_others:
            return Caller(principal, tenant)
        raise RouterError(
            errors.TENANT_NOT_ALLOWED,
            f"principal {principal.name!r} may not act for tenant {errors.echo(tenant)}",
            metadata={"principal": principal.name, "tenant": errors.clip(tenant)},
        )

    def _identify(self, bearer: str | None, certificate_names: Sequence[str]) -> Principal:
        if bearer:
            # Looked up by the key's hash: timing can tell at most something about a hash, not the key.
            principal = self._by_key.get(hash_key(bearer))
            if principal is not None:
                return principal
            raise RouterError(errors.CREDENTIALS_INVALID, "the API key is not valid")
        for name in certificate_names:
            principal = self._by_certificate.get(name)
            if principal is not None:
                return principal
        if certificate_names:
            raise RouterError(
                errors.CREDENTIALS_INVALID,
                "the client certificate names no known principal",
            )
        raise RouterError(
            errors.CREDENTIALS_MISSING,
            "authentication is required: send `authorization: Bearer <API key>` or a client certificate",
        )
