"""The one error hierarchy of cicb.

``PermanentError`` means retrying cannot help (bad payload, no such task): the work is
dead-lettered at once. ``TransientError`` means it may work later (network, broker): it is
retried with backoff until the retry budget is used up, then dead-lettered.
"""

from __future__ import annotations

from typing import Any


class PipelineError(Exception):
    """Root of every error cicb raises on purpose.

    ``replay_kwargs``: keyword arguments a retry or a replay of the failed task must carry
    (the notify targets still pending, for example); the task base reads them.
    """

    @property
    def replay_kwargs(self) -> dict[str, Any]:
        return {}

    def __reduce__(self) -> tuple[Any, ...]:
        # Celery pickles a failing task's exception and, if that does not round-trip,
        # hands on_failure a base class instead. Rebuild from args and attributes, whatever
        # the subclass's __init__ takes, so the dead letter names the real error.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[PipelineError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class PermanentError(PipelineError):
    """Retrying cannot succeed; dead-letter the work now."""


class TransientError(PipelineError):
    """A passing failure; retry with backoff, waiting at least ``retry_after_s`` if set."""

    retry_after_s: float | None = None


class ParseError(PermanentError):
    """The callback body is not a callback cicb can read.

    ``path`` names where in the document the problem is (``JobsDetail.JobId``), or is
    empty when the body as a whole is unreadable.
    """

    def __init__(self, reason: str, *, path: str = "") -> None:
        self.reason = reason
        self.path = path
        super().__init__(f"{path}: {reason}" if path else reason)


class ConfigError(PermanentError):
    """A ``CICB_`` setting or a custom route module is wrong."""


class BrokerUnavailable(TransientError):
    """The broker did not take or give a message."""


class DeliveryError(TransientError):
    """A notification target failed in a way worth retrying (timeout, 408, 429, 5xx);
    ``may_have_arrived``: there was no answer, and the request may have reached it."""

    def __init__(
        self,
        url: str,
        reason: str,
        *,
        retry_after_s: float | None = None,
        may_have_arrived: bool = False,
    ) -> None:
        self.url = url
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.may_have_arrived = may_have_arrived
        super().__init__(f"{url}: {reason}")


class DeliveryRejected(PermanentError):
    """A notification target refused the event (a 4xx other than 408 and 429)."""

    def __init__(self, url: str, status: int, body: str) -> None:
        self.url = url
        self.status = status
        self.body = body
        super().__init__(f"{url}: HTTP {status}: {body[:200]}")
