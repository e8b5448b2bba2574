"""The provider adapter interface. The dispatcher only ever talks to a provider through this."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Outbound:
    message_id: int
    to: str
    body: str
    sender: str | None = None
    status_callback: str | None = None


@dataclass(frozen=True)
class Accepted:
    """The provider took the message."""

    provider_id: str
    status: str = "sent"  # provider's own word: queued / accepted / sent
    segments: int | None = None


@dataclass(frozen=True)
class Found:
    """A message the provider already has, found when reconciling an uncertain attempt."""

    provider_id: str
    to: str
    body: str
    status: str
    created_at: datetime | None = None


#: Codes of failures that carry no code of the provider's own, so that every failed message has a
#: code and a text (``audit check``): an HTTP status without a code, no answer (the message may
#: exist), surely not sent (connection failed), anything else.
NO_ANSWER = "no-answer"
NOT_SENT = "not-sent"
ERROR = "error"


def fallback_code(http_status: int | None, *, transient: bool, accepted_maybe: bool) -> str:
    if http_status is not None:
        return f"http-{http_status}"
    if accepted_maybe:
        return NO_ANSWER
    return NOT_SENT if transient else ERROR


class ProviderError(Exception):
    """A refusal or failure. ``accepted_maybe`` means the request may have reached the provider
    (timeout, 5xx after sending, connection lost mid-request): never resend without reconciling.

    ``code`` is the provider's error code or, when it gave none, a fallback (:func:`fallback_code`:
    ``http-NNN``, ``no-answer``, ``not-sent``, ``error``); a failed message records it."""

    def __init__(
        self,
        text: str,
        *,
        code: str | None = None,
        http_status: int | None = None,
        transient: bool = False,
        accepted_maybe: bool = False,
        opt_out: bool = False,
    ) -> None:
        super().__init__(text)
        self.text = text
        self.code = code or fallback_code(http_status, transient=transient, accepted_maybe=accepted_maybe)
        self.http_status = http_status
        self.transient = transient
        self.accepted_maybe = accepted_maybe
        self.opt_out = opt_out


@runtime_checkable
class Provider(Protocol):
    name: str
    #: Whether :meth:`lookup` can answer; a provider that cannot leaves uncertain messages to an operator.
    can_lookup: bool

    def send(self, message: Outbound) -> Accepted: ...

    def lookup(self, to: str, since: datetime) -> list[Found]: ...


@runtime_checkable
class AsyncSending(Protocol):
    """A provider that can also send from an event loop, so one thread keeps many requests in flight
    (the dispatcher uses it instead of a thread pool). Same contract as :meth:`Provider.send`;
    ``aclose`` releases what the provider opened on the running loop, before that loop ends."""

    async def send_async(self, message: Outbound) -> Accepted: ...

    async def aclose(self) -> None: ...


@dataclass
class ProviderInfo:
    name: str
    details: dict[str, str] = field(default_factory=dict)
