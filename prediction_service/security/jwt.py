"""JWT bearer tokens beside API keys: ``Authorization: Bearer <token>`` verified with PyJWT against the
configured keys (an HS256 secret, or RS256 / ES256 public keys), issuer, audience, expiry and leeway.

A token's scope comes from one claim (``JWT_SCOPE_CLAIM``, ``scope`` by default: a space-separated
string or a list), whose values ``read``, ``outcome`` and ``admin`` (after ``JWT_SCOPE_PREFIX``, e.g.
``predictions:``) map onto the API key scopes; the highest one present wins. A bad or expired token is 401
with the reason, never with a word about the keys.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt

from ..errors import Forbidden, Unauthorized
from ..types import Scope

if TYPE_CHECKING:
    from ..settings import SecuritySettings

BEARER = "bearer "


class BearerIdentity:
    """Who a verified token speaks for: the scope it grants and a short, non-secret id (rate limits, audit)."""

    __slots__ = ("scope", "key_id")

    def __init__(self, scope: Scope, key_id: str):
        self.scope, self.key_id = scope, key_id


class JwtVerifier:
    def __init__(self, security: "SecuritySettings"):
        self.algorithms = security.jwt_algorithm_list
        self.issuer = security.jwt_issuer or None
        self.audience = security.jwt_audience or None
        self.leeway = security.jwt_leeway_seconds
        self.scope_claim = security.jwt_scope_claim
        self.scope_prefix = security.jwt_scope_prefix
        # (key, the algorithms it may verify): a secret only HMAC, a public key only signatures, so no
        # token can pass a public key off as an HMAC secret (algorithm confusion).
        self.keys: list[tuple[Any, list[str]]] = []
        hmac_algorithms = [a for a in self.algorithms if a.startswith("HS")]
        signature_algorithms = [a for a in self.algorithms if not a.startswith("HS")]
        if security.jwt_secret and hmac_algorithms:
            self.keys.append((security.jwt_secret, hmac_algorithms))
        if signature_algorithms:
            for path in security.jwt_public_key_list:
                self.keys.append((Path(path).read_text(), signature_algorithms))

    @classmethod
    def from_settings(cls, security: "SecuritySettings") -> "JwtVerifier | None":
        return cls(security) if security.jwt_secret or security.jwt_public_keys else None

    def verify(self, token: str) -> BearerIdentity:
        """The identity a valid token speaks for; Unauthorized (with the reason) or Forbidden (no scope)."""
        claims = self._claims(token)
        scope = self._scope(claims.get(self.scope_claim))
        subject = f"{claims.get('iss', '')}/{claims.get('sub', '')}"
        return BearerIdentity(scope, "jwt-" + hashlib.sha256(subject.encode()).hexdigest()[:8])

    def _claims(self, token: str) -> dict[str, Any]:
        last: Exception | None = None
        for key, algorithms in self.keys:  # each configured key in turn: a signature none verifies is refused
            try:
                return jwt.decode(token, key, algorithms=algorithms, audience=self.audience, issuer=self.issuer,
                                  leeway=self.leeway, options={"require": ["exp"]})
            except (jwt.InvalidSignatureError, jwt.InvalidAlgorithmError, jwt.InvalidKeyError) as exc:
                last = exc  # maybe another key's
            except jwt.ExpiredSignatureError:
                raise Unauthorized("bearer token expired") from None
            except jwt.ImmatureSignatureError:
                raise Unauthorized("bearer token not valid yet (nbf/iat in the future)") from None
            except jwt.InvalidAudienceError:
                raise Unauthorized("bearer token is for another audience") from None
            except jwt.InvalidIssuerError:
                raise Unauthorized("bearer token from another issuer") from None
            except jwt.MissingRequiredClaimError as exc:
                raise Unauthorized(f"bearer token lacks the {exc.claim!r} claim") from None
            except jwt.DecodeError:
                raise Unauthorized("malformed bearer token") from None
            except jwt.PyJWTError:
                raise Unauthorized("invalid bearer token") from None
        if isinstance(last, jwt.InvalidAlgorithmError):
            raise Unauthorized(f"bearer token algorithm not accepted (accepted: {', '.join(self.algorithms)})")
        raise Unauthorized("bearer token signature does not verify")

    def _scope(self, claim: Any) -> Scope:
        values = claim.split() if isinstance(claim, str) else claim if isinstance(claim, list) else []
        granted = [Scope[value[len(self.scope_prefix):].upper()] for value in values
                   if isinstance(value, str) and value.startswith(self.scope_prefix)
                   and value[len(self.scope_prefix):] in ("read", "outcome", "admin")]
        if not granted:
            raise Forbidden(f"bearer token grants no scope (claim {self.scope_claim!r}: "
                            f"{self.scope_prefix}read, {self.scope_prefix}outcome or {self.scope_prefix}admin)")
        return max(granted)


def bearer_token(presented: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value, else None."""
    return presented[len(BEARER):].strip() if presented[:len(BEARER)].lower() == BEARER else None
