"""Sign-in for the console: the token, a signed session cookie and CSRF tokens.

Sessions are stateless: the cookie is ``<issued>.<nonce>.<mac>``, an HMAC keyed by the
console's token, valid for ``SESSION_TTL_S``. Changing the token ends every session. A
form's CSRF token is an HMAC of the session's nonce, so it is tied to that session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from pipeline import logs
from pipeline.logguard import LogThrottle

COOKIE: Final = "cicb_console"
SESSION_TTL_S: Final = 12 * 3600
CSRF_FIELD: Final = "csrf"

log = logs.get_logger("cicb.console")


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


@dataclass(frozen=True, slots=True)
class Session:
    nonce: str
    csrf: str


class Guard:
    """Checks the sign-in token, makes and reads session cookies, checks CSRF tokens, and
    logs refusals (throttled, as the receiver does: never the token)."""

    def __init__(self, token: str, *, clock: Callable[[], float] = time.time) -> None:
        if not token:
            raise ValueError("the console needs a token")
        self._token_digest = _digest(token)
        self._key = hmac.new(self._token_digest, b"cicb-console-session", "sha256").digest()
        self._clock = clock
        self._refusals = LogThrottle()

    def token_ok(self, given: str) -> bool:
        return bool(given) and hmac.compare_digest(_digest(given), self._token_digest)

    def _mac(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), "sha256").hexdigest()

    def new_cookie(self) -> str:
        signed = f"{int(self._clock())}.{secrets.token_hex(16)}"
        return f"{signed}.{self._mac(signed)}"

    def session(self, cookie: str | None) -> Session | None:
        """The session ``cookie`` holds, or None when it is missing, forged or expired."""
        issued, _, rest = (cookie or "").partition(".")
        nonce, _, mac = rest.partition(".")
        if not (issued.isdigit() and nonce and mac):
            return None
        if not hmac.compare_digest(mac, self._mac(f"{issued}.{nonce}")):
            return None
        if not 0 <= self._clock() - int(issued) < SESSION_TTL_S:
            return None
        return Session(nonce=nonce, csrf=self._mac(f"csrf:{nonce}"))

    @staticmethod
    def csrf_ok(session: Session, given: str) -> bool:
        return bool(given) and hmac.compare_digest(given, session.csrf)

    def refused(self, status: int, reason: str, *, remote: str | None, path: str) -> None:
        admission = self._refusals.admit()
        if admission.suppressed:
            log.warning("console.refusals_suppressed", count=admission.suppressed)
        if admission.log:
            log.warning(
                "console.refused", status=status, reason=reason, remote_addr=remote, path=path
            )
