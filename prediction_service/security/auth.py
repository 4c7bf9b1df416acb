"""API keys: parsed once into sha256 digests with a scope; compared in constant time.

``API_KEYS="k1,k2:read,k3:outcome"`` -> k1 is admin, k2 read-only, k3 read plus reporting A/B outcomes
for any prediction (the system that reports fills and P&L). No keys configured = no auth. A third field is the
key's default priority: ``k4:read:3`` queues k4's predictions at priority 3 (1 is the highest) unless a
request names its own.
A missing or unknown key is 401; a read key on an admin endpoint is 403.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import Forbidden, Unauthorized
from ..types import MAX_PRIORITY_LEVELS, RequestContext, Scope
from ..v1.schemas import API_KEY_HEADER
from .jwt import JwtVerifier, bearer_token

if TYPE_CHECKING:
    from ..settings import SecuritySettings

__all__ = ["API_KEY_HEADER", "ApiKey", "ApiKeyStore", "Scope", "VersionAccess", "presented_credential"]


@dataclass(frozen=True)
class ApiKey:
    digest: bytes
    scope: Scope
    key_id: str
    """Short, non-secret id (first 8 hex chars of the digest) for logs and rate limiting."""
    priority: int | None = None
    """The priority this key's predictions queue at when they name none; None: the server's default."""


def _digest(raw: str) -> bytes:
    return hashlib.sha256(raw.encode()).digest()


def presented_credential(api_key: str | None, authorization: str | None) -> str | None:
    """What a caller presented: its API key, else its ``Authorization: Bearer`` value (as sent), else None."""
    if api_key:
        return api_key
    if authorization and bearer_token(authorization) is not None:
        return authorization
    return None


class ApiKeyStore:
    def __init__(self, spec: str, priority_levels: int = MAX_PRIORITY_LEVELS, bearer: JwtVerifier | None = None):
        """``spec``: API_KEYS, ``key[:scope[:priority]]`` each; a priority past ``priority_levels`` is refused.
        ``bearer``: verifies ``Authorization: Bearer`` JWTs beside the keys (None: keys only)."""
        self.bearer = bearer
        self.keys: list[ApiKey] = []
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            raw, _, rest = item.partition(":")
            scope_name, _, priority_text = rest.partition(":")
            scope_name = (scope_name or "admin").lower()
            if scope_name not in ("read", "outcome", "admin"):
                raise ValueError(f"API_KEYS: unknown scope {scope_name!r} (use :read, :outcome or :admin)")
            digest = _digest(raw)
            key = ApiKey(digest, Scope[scope_name.upper()], digest.hex()[:8],
                         _key_priority(priority_text, digest.hex()[:8], priority_levels))
            if any(k.key_id == key.key_id and k.digest != digest for k in self.keys):
                # key ids attribute predictions to their caller (A/B outcomes): two keys must not share one
                raise ValueError("API_KEYS: two keys share a key id (first 8 hex chars of sha256); replace one")
            self.keys.append(key)

    @property
    def enabled(self) -> bool:
        return bool(self.keys) or self.bearer is not None

    def authenticate(self, presented: str | None, needed: Scope) -> ApiKey | None:
        """The matching key (or the identity of a bearer token), None when auth is off; raises Unauthorized /
        Forbidden. ``presented``: ``presented_credential``'s answer."""
        if not self.enabled:
            return None
        if not presented:
            raise Unauthorized(f"missing {API_KEY_HEADER} header" + (" or Authorization: Bearer token"
                                                                     if self.bearer is not None else ""))
        token = bearer_token(presented)
        if token is not None:
            return self._bearer(token, needed)
        digest = _digest(presented)
        match = None
        for key in self.keys:  # check every key: no early exit that leaks which prefix matched
            if hmac.compare_digest(key.digest, digest):
                match = key
        if match is None:
            raise Unauthorized("invalid API key")
        if match.scope < needed:
            raise Forbidden(f"this API key has {match.scope.name.lower()} scope; {needed.name.lower()} is required")
        return match


    def _bearer(self, token: str, needed: Scope) -> ApiKey:
        if self.bearer is None:
            raise Unauthorized(f"bearer tokens are not accepted by this server; send {API_KEY_HEADER}")
        identity = self.bearer.verify(token)
        if identity.scope < needed:
            raise Forbidden(f"this bearer token has {identity.scope.name.lower()} scope; "
                            f"{needed.name.lower()} is required")
        return ApiKey(b"", identity.scope, identity.key_id)


def _key_priority(text: str, key_id: str, levels: int) -> int | None:
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) <= levels:  # the key itself never goes into a message
        raise ValueError(f"API_KEYS: key {key_id}: priority {text!r} is not an integer in 1..{levels} "
                         "(BATCH_PRIORITY_LEVELS; 1 is the highest)")
    return int(text)


class VersionAccess:
    """Any caller may pick a stage. With API keys configured, an explicit version needs
    ``SECURITY_VERSION_SELECTION_SCOPE`` (read by default), and a version that no stage serves or that is
    archived needs admin: such versions are loaded on demand, and each load spends the worker's
    version-load budget and memory that the staged versions need."""

    def __init__(self, security: "SecuritySettings"):
        self.security = security

    @property
    def enabled(self) -> bool:
        """False without API keys: there are no scopes to check (and no registry read is needed)."""
        return bool(self.security.api_keys)

    def check(self, what: str, *, unstaged: bool, context: "RequestContext") -> None:
        if not self.enabled:
            return
        needed = Scope.ADMIN if unstaged else {"any": None, "read": Scope.READ,
                                                "admin": Scope.ADMIN}[self.security.version_selection_scope]
        if needed is None:
            return
        if context.scope is None:
            raise Unauthorized(f"asking for {what} needs an API key ({needed.name.lower()} scope); "
                               "or ask for a stage")
        if context.scope < needed:
            raise Forbidden(f"asking for {what} needs {needed.name.lower()} scope")
