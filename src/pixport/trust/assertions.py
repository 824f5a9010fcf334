"""Node authentication: short-lived signed client assertions, in the manner of RFC 7523.

Every request between nodes carries ``Authorization: PixPort-Assertion <JWT>``, a JWT the
caller signs with its own key for that one request:

- ``iss`` and ``sub``: who is calling (an institution code, ``hub``, or ``operator``);
- ``aud``: the node it is meant for (its audience id), so it cannot be replayed elsewhere;
- ``htm`` and ``htu``: the HTTP method and the URL path it is for (as DPoP, RFC 9449), so it
  cannot be replayed against another resource;
- ``iat``, ``exp``: at most ``MAX_LIFETIME`` apart; ``jti``: unique, remembered by the
  receiver until ``exp``, so it cannot be replayed at all.

The receiver looks the key up by ``kid`` among the caller's own keys (the directory for an
institution, pinned keys for the hub and the operator): a node can only act as itself.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.exceptions import InvalidTokenError

from pixport.errors import KeyNotTrusted, NotAuthenticated
from pixport.trust.keys import PublicKey, SigningKey

SCHEME = "PixPort-Assertion"
ASSERTION_TYPE = "pixport-assertion+jwt"
MAX_LIFETIME = 300
LIFETIME = 60
CLOCK_SKEW = 30


@dataclass(frozen=True, slots=True)
class Caller:
    """Who an assertion proved the caller to be."""

    subject: str
    kid: str
    jti: str
    expires_at: int


def make_assertion(key: SigningKey, subject: str, audience: str, method: str, path: str) -> str:
    """A fresh assertion by ``subject`` for one request (``method`` ``path``) to ``audience``."""
    now = int(time.time())
    claims = {
        "iss": subject,
        "sub": subject,
        "aud": audience,
        "htm": method.upper(),
        "htu": path,
        "iat": now,
        "exp": now + LIFETIME,
        "jti": secrets.token_urlsafe(24),
    }
    return jwt.encode(claims, key.private_key, algorithm=key.algorithm, headers={"kid": key.kid, "typ": ASSERTION_TYPE})


def authorization_header(key: SigningKey, subject: str, audience: str, method: str, path: str) -> dict[str, str]:
    """The ``Authorization`` header for one request."""
    return {"Authorization": f"{SCHEME} {make_assertion(key, subject, audience, method, path)}"}


KeyLookup = Callable[[str, str], PublicKey]
"""(subject, kid) -> the subject's public key with that kid, valid now; raises KeyNotTrusted."""


def verify_assertion(
    header_value: str | None,
    *,
    audience: str,
    method: str,
    path: str,
    lookup: KeyLookup,
    first_use: Callable[[str, int], bool],
) -> Caller:
    """The caller an ``Authorization`` header proves, or NotAuthenticated saying why not.

    ``first_use(jti, exp)`` records the assertion's id and returns False if it was seen before.
    Reasons never quote the token.
    """
    if not header_value or not header_value.startswith(SCHEME + " "):
        raise NotAuthenticated(f"an {SCHEME} authorization is required")
    token = header_value[len(SCHEME) + 1 :].strip()
    try:
        header = jwt.get_unverified_header(token)
        unverified: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except InvalidTokenError:
        raise NotAuthenticated("the assertion is not a JWT") from None
    kid, subject = header.get("kid"), unverified.get("sub")
    if header.get("typ") != ASSERTION_TYPE or not isinstance(kid, str) or not isinstance(subject, str):
        raise NotAuthenticated("the assertion lacks its type, kid or subject")
    try:
        public_key = lookup(subject, kid)
    except KeyNotTrusted as exc:
        raise NotAuthenticated(f"the caller's key is not trusted: {exc.reason}") from None
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            public_key,
            algorithms=["EdDSA", "ES256"],
            audience=audience,
            leeway=CLOCK_SKEW,
            options={"require": ["iss", "sub", "aud", "iat", "exp", "jti", "htm", "htu"]},
        )
    except jwt.ExpiredSignatureError:
        raise NotAuthenticated("the assertion has expired") from None
    except jwt.InvalidAudienceError:
        raise NotAuthenticated("the assertion is meant for another node") from None
    except InvalidTokenError as exc:
        raise NotAuthenticated(f"the assertion does not verify: {type(exc).__name__}") from None
    if claims["iss"] != subject:
        raise NotAuthenticated("the assertion's issuer and subject differ")
    if claims["exp"] - claims["iat"] > MAX_LIFETIME:
        raise NotAuthenticated(f"the assertion lives longer than {MAX_LIFETIME} s")
    if claims["htm"] != method.upper() or claims["htu"] != path:
        raise NotAuthenticated("the assertion is for another request")
    if not first_use(str(claims["jti"]), int(claims["exp"])):
        raise NotAuthenticated("the assertion was used before (replay)")
    return Caller(subject, kid, str(claims["jti"]), int(claims["exp"]))
