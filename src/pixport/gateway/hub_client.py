"""Calls from this institution to the hub, each with a fresh signed assertion (``trust.assertions``).

Needs only the gateway's identity settings (``gateway.institution_code``, ``signing_key``,
``hub_url``, ``hub_audience``), not its archive: ``pixport verify --report`` uses it on a
machine that only verifies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from pixport.config import Settings
from pixport.errors import ConfigurationError, PeerUnavailable, TrustError
from pixport.trust.assertions import authorization_header
from pixport.trust.keys import SigningKey

TIMEOUT_S = 120


class HubRefused(TrustError):
    """The hub answered a call with an error status; ``status`` and ``detail`` are the hub's."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"the hub refused ({status}): {detail}")
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class HubClient:
    """An institution speaking to the hub as itself, with its own key."""

    institution_code: str
    key: SigningKey
    hub_url: str
    audience: str

    @classmethod
    def from_settings(cls, settings: Settings) -> HubClient:
        """The client for the configured gateway; ConfigurationError naming a missing setting."""
        gateway = settings.gateway
        code, key, url = gateway.institution_code, gateway.signing_key, gateway.hub_url
        if code is None or key is None or url is None:
            missing = [n for n, v in (("institution_code", code), ("signing_key", key), ("hub_url", url)) if v is None]
            raise ConfigurationError(f"gateway.{missing[0]} is not set")
        return cls(code, SigningKey.load(key), url.rstrip("/"), gateway.hub_audience)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call; PeerUnavailable if the hub cannot be reached, HubRefused with its reason if refused."""
        headers = authorization_header(
            self.key, self.institution_code, self.audience, method, path.split("?", maxsplit=1)[0]
        )
        try:
            response = httpx.request(method, self.hub_url + path, headers=headers, timeout=TIMEOUT_S, **kwargs)
        except httpx.HTTPError as exc:
            raise PeerUnavailable(f"the hub is unreachable: {type(exc).__name__}") from None
        if response.status_code >= 400:  # noqa: PLR2004
            try:
                detail = str(response.json().get("detail", ""))
            except (ValueError, AttributeError):
                detail = response.text[:200]
            raise HubRefused(response.status_code, detail)
        return response

    def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a JSON object; the hub's JSON answer."""
        answer: dict[str, Any] = self.request("POST", path, json=body).json()
        return answer
