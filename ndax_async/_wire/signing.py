"""Credentials, request signing and the authentication headers.

``X-NDAX-SIGNED`` is ``base64(HMAC_SHA256(base64decode(secret), timestamp +
METHOD + route + body))`` (spec, "Authentication"). A request without a body
signs the literal ``{}``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from ..errors import ConfigurationError

__all__ = ["EMPTY_BODY", "Credentials"]

EMPTY_BODY = b"{}"


class Credentials:
    """An API key, its base64 secret and passphrase; signs requests.

    The secret and passphrase are never shown by ``repr``/``str``; a secret that
    is not valid base64 raises :class:`ConfigurationError` here, before any I/O.
    """

    __slots__ = ("_hmac", "_passphrase", "api_key")

    def __init__(self, api_key: str, api_secret: str, passphrase: str) -> None:
        for name, value in (("api_key", api_key), ("api_secret", api_secret), ("passphrase", passphrase)):
            if not isinstance(value, str) or not value:
                raise ConfigurationError(f"{name} is required (a non-empty string)")
            if not (value.isascii() and value.isprintable()):  # it travels in a header
                raise ConfigurationError(f"{name} must be printable ASCII (no line breaks)")
        try:
            key = base64.b64decode(api_secret.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigurationError("api_secret is not valid base64") from None
        if not key:
            raise ConfigurationError("api_secret decodes to no bytes")
        self.api_key = api_key
        self._passphrase = passphrase
        # Keyed once; each signature copies this state instead of re-keying.
        self._hmac = hmac.new(key, digestmod=hashlib.sha256)

    def sign(self, timestamp: str, method: str, route: str, body: bytes) -> str:
        """Return the base64 signature of one attempt."""
        mac = self._hmac.copy()
        mac.update(f"{timestamp}{method}{route}".encode())
        mac.update(body)
        return base64.b64encode(mac.digest()).decode("ascii")

    def headers(self, timestamp: str, method: str, route: str, body: bytes) -> dict[str, str]:
        """The four authentication headers for one attempt."""
        return {
            "X-NDAX-API-KEY": self.api_key,
            "X-NDAX-PASSPHRASE": self._passphrase,
            "X-NDAX-TIMESTAMP": timestamp,
            "X-NDAX-SIGNED": self.sign(timestamp, method, route, body),
        }

    def __repr__(self) -> str:
        return f"Credentials(api_key={self.api_key!r}, api_secret=<hidden>, passphrase=<hidden>)"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("Credentials cannot be pickled (they hold a secret)")
