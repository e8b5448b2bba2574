"""Twilio adapter: sends through the official ``twilio`` SDK and says, for every failure, whether the
message may exist at Twilio (``accepted_maybe``), surely does not (``transient``: retry later), or was
refused for good (code and text).

One SDK client (one ``requests`` session with a connection pool as large as the sending thread pool)
is shared by all dispatcher threads; ``send_async`` uses the SDK's async API over one aiohttp
session per event loop (a third of the CPU per message, no thread per request in flight).
``BROADCASTER_TWILIO_BASE_URL`` points both at a Twilio-compatible endpoint (the fake server in tests
and demos) by rewriting scheme and host of every request.

The auth token is only handed to the SDK: it never appears in a log line, an error or the database.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
import requests
from pydantic import SecretStr
from requests.adapters import HTTPAdapter
from twilio.base.exceptions import TwilioRestException
from twilio.http import AsyncHttpClient
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response as TwilioResponse
from twilio.rest import Client

from broadcaster.clock import Clock, SystemClock
from broadcaster.providers import ProviderConfigError
from broadcaster.providers.base import Accepted, Found, Outbound, ProviderError
from broadcaster.settings import Settings

log = logging.getLogger(__name__)
_http_log = logging.getLogger("broadcaster.providers.twilio.http")

STATUS_CALLBACK_PATH = "/twilio/status"

#: Refusals Twilio gives before processing anything, worth trying again later.
TRANSIENT_CODES = frozenset({20429, 21611, 30001, 30003, 30008, 30500})
#: The recipient has replied STOP to this sender: record an opt-out.
OPT_OUT_CODES = frozenset({21610})
#: Lookups stop after this many messages to one number (none older than the attempt seen yet).
LOOKUP_MAX_RECORDS = 2000


class Endpoint:
    """Where requests for ``*.twilio.com`` really go (``BROADCASTER_TWILIO_BASE_URL``), and through
    which proxy: both read once, not per request."""

    def __init__(self, base_url: str | None) -> None:
        self._base: tuple[str, str, str] | None = None
        if base_url:
            parts = urlsplit(base_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ProviderConfigError(
                    f"BROADCASTER_TWILIO_BASE_URL must look like http(s)://host[:port], got {base_url!r}"
                )
            self._base = (parts.scheme, parts.netloc, parts.path.rstrip("/"))
        # Proxy variables are read once here, not scanned from os.environ twice per request (a third
        # of the sync client's CPU per message); NO_PROXY is honoured for the target.
        self.proxies: dict[str, str] = requests.utils.get_environ_proxies(
            base_url or "https://api.twilio.com"
        )
        self.ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        # The async client's TLS context, built here once (reading a CA bundle takes ~100 ms: not
        # something the first message should wait for); None: aiohttp's default, or plain HTTP.
        self.ssl_context: ssl.SSLContext | None = None
        if self.ca_bundle and (self._base is None or self._base[0] == "https"):
            self.ssl_context = ssl.create_default_context(cafile=self.ca_bundle)

    def rewrite(self, url: str) -> str:
        """Send a request for ``*.twilio.com`` to the configured endpoint instead (same path)."""
        if self._base is None:
            return url
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if not (host == "twilio.com" or host.endswith(".twilio.com")):
            return url
        scheme, netloc, prefix = self._base
        return urlunsplit((scheme, netloc, prefix + parts.path, parts.query, parts.fragment))

    def proxy_for(self, url: str) -> str | None:
        return self.proxies.get(urlsplit(url).scheme) or self.proxies.get("all")


class EndpointHttpClient(TwilioHttpClient):
    """The SDK's HTTP client with (connect, read) timeouts, a pool sized for many threads, no
    automatic retries, quiet logging (method and path only) and an optional endpoint override."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        pool_size: int = 64,
        connect_timeout: float = 5.0,
        read_timeout: float = 20.0,
    ) -> None:
        super().__init__(pool_connections=True, logger=_http_log)
        self.endpoint = Endpoint(base_url)
        self.timeout = (connect_timeout, read_timeout)  # type: ignore[assignment]  # requests takes a pair
        # max_retries=0: a POST retried by the transport could create a second message.
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        assert self.session is not None
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.proxy = self.endpoint.proxies
        if self.endpoint.ca_bundle:
            self.session.verify = self.endpoint.ca_bundle
        self.session.trust_env = False

    def rewrite(self, url: str) -> str:
        return self.endpoint.rewrite(url)

    def request(self, method: str, url: str, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def,override]
        return super().request(method, self.rewrite(url), *args, **kwargs)

    def log_request(self, kwargs: dict[str, Any]) -> None:
        # Never headers (Authorization) nor the form (message bodies are personal data).
        _http_log.debug("%s %s", kwargs["method"], urlsplit(kwargs["url"]).path)

    def log_response(self, status_code: int, response: Any) -> None:
        _http_log.debug("-> HTTP %s", status_code)


class EndpointAsyncHttpClient(AsyncHttpClient):
    """The SDK's async client interface over one aiohttp session: same endpoint override, proxy,
    timeouts (connect, then between bytes of the answer), no retries of a POST, quiet logging.

    Create it inside the event loop that will use it (aiohttp binds the session to that loop). Its
    pool has no cap of its own: the caller bounds the requests in flight (the dispatcher's
    ``BROADCASTER_CONCURRENCY``), and each keeps its connection for the next."""

    def __init__(
        self, endpoint: Endpoint, *, connect_timeout: float = 5.0, read_timeout: float = 20.0
    ) -> None:
        super().__init__(_http_log, True, None)
        self.endpoint = endpoint
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=endpoint.ssl_context or True),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout),
            trust_env=False,  # proxies come from the endpoint, read once
        )

    async def request(  # type: ignore[override]
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> TwilioResponse:
        target = self.endpoint.rewrite(url)
        sent_headers = dict(headers or {})
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
            sent_headers["Authorization"] = f"Basic {token}"
        body: bytes | None = None
        if data:  # encoded here: aiohttp's FormData costs a multipart writer and a uuid per request
            body = urlencode(data, doseq=True).encode("utf-8")
            sent_headers["Content-Type"] = "application/x-www-form-urlencoded"
        _http_log.debug("%s %s", method, urlsplit(target).path)
        async with self.session.request(
            method.upper(),
            target,
            params=params,  # type: ignore[arg-type]
            data=body,
            headers=sent_headers,
            allow_redirects=allow_redirects,
            proxy=self.endpoint.proxy_for(target),
        ) as response:
            body = await response.read()
        _http_log.debug("-> HTTP %s", response.status)
        return TwilioResponse(response.status, body.decode("utf-8", errors="replace"), response.headers)

    async def close(self) -> None:
        await self.session.close()


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, its explicit causes and the exceptions it wraps (requests wraps urllib3 wraps
    OSError). Not ``__context__``: an unrelated error handled earlier must not decide the outcome."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        cur = todo.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        for nxt in (cur.__cause__, getattr(cur, "reason", None), *cur.args):
            if isinstance(nxt, BaseException):
                todo.append(nxt)


def _never_connected(exc: BaseException) -> bool:
    """True when the TCP connection was never made, so not a byte of the request left this host."""
    import urllib3.exceptions as u3

    # NewConnectionError (refused, unreachable, DNS: NameResolutionError) is a ConnectTimeoutError.
    return any(isinstance(cur, u3.ConnectTimeoutError | ConnectionRefusedError) for cur in _chain(exc))


def classify(exc: BaseException, *, secret: str | None = None) -> ProviderError:
    """Turn anything the SDK or the transport raised while creating a message into a ProviderError.

    Surely not sent (``transient``): HTTP 429 / 20429, the retryable Twilio codes, connection refused,
    DNS failure, connect timeout, TLS handshake failure. May exist (``accepted_maybe``): read timeout,
    HTTP 5xx, connection lost after sending, an unreadable 2xx. Anything else is a permanent refusal.
    """
    if isinstance(exc, TwilioRestException):
        status = int(exc.status) if exc.status is not None else None
        code = int(exc.code) if isinstance(exc.code, int) or str(exc.code).isdigit() else None
        text = _scrub(f"Twilio error {code} (HTTP {status}): {_short(exc.msg)}", secret)
        code_s = str(code) if code is not None else None
        if status == 429 or code == 20429:
            return ProviderError(text, code=code_s, http_status=status, transient=True)
        if status is not None and status >= 500:
            return ProviderError(text, code=code_s, http_status=status, accepted_maybe=True)
        if code in TRANSIENT_CODES:
            return ProviderError(text, code=code_s, http_status=status, transient=True)
        return ProviderError(text, code=code_s, http_status=status, opt_out=code in OPT_OUT_CODES)
    name = type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        # Includes TLS handshake and proxy connection failures: the request was never written.
        return ProviderError(_scrub(f"cannot connect to Twilio ({name}): not sent", secret), transient=True)
    if isinstance(exc, asyncio.TimeoutError):  # aiohttp's read timeout (SocketTimeoutError) and others
        return ProviderError(
            _scrub("no answer from Twilio within the read timeout: the message may exist", secret),
            accepted_maybe=True,
        )
    if isinstance(exc, aiohttp.ClientError):
        return ProviderError(
            _scrub(f"connection to Twilio lost after sending ({name}): the message may exist", secret),
            accepted_maybe=True,
        )
    if isinstance(exc, requests.exceptions.ConnectTimeout) or (
        isinstance(exc, requests.exceptions.ConnectionError) and _never_connected(exc)
    ):
        return ProviderError(_scrub(f"cannot connect to Twilio ({name}): not sent", secret), transient=True)
    if isinstance(exc, requests.exceptions.SSLError | requests.exceptions.ProxyError):
        return ProviderError(_scrub(f"TLS/proxy failure before sending ({name})", secret), transient=True)
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return ProviderError(
            _scrub("no answer from Twilio within the read timeout: the message may exist", secret),
            accepted_maybe=True,
        )
    if isinstance(exc, requests.exceptions.RequestException):
        return ProviderError(
            _scrub(f"connection to Twilio lost after sending ({name}): the message may exist", secret),
            accepted_maybe=True,
        )
    return ProviderError(
        _scrub(f"unreadable answer from Twilio ({name}): the message may exist", secret), accepted_maybe=True
    )


def _short(text: object, limit: int = 300) -> str:
    out = " ".join(str(text or "").split())
    return out if len(out) <= limit else out[: limit - 1] + "…"


def _scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "[redacted]") if secret else text


def _int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload, no-any-return]
    except (TypeError, ValueError):
        return None


class TwilioProvider:
    name = "twilio"
    can_lookup = True

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        from_number: str | None = None,
        messaging_service_sid: str | None = None,
        base_url: str | None = None,
        webhook_base_url: str | None = None,
        validity_period: int | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 20.0,
        pool_size: int = 64,
        lookup_skew: timedelta = timedelta(minutes=5),
        clock: Clock | None = None,
    ) -> None:
        if not account_sid:
            raise ProviderConfigError("TWILIO_ACCOUNT_SID is not set (needed by BROADCASTER_PROVIDER=twilio)")
        if not auth_token:
            raise ProviderConfigError("TWILIO_AUTH_TOKEN is not set (needed by BROADCASTER_PROVIDER=twilio)")
        if not (from_number or messaging_service_sid):
            raise ProviderConfigError(
                "set TWILIO_MESSAGING_SERVICE_SID or TWILIO_FROM_NUMBER"
                " (needed by BROADCASTER_PROVIDER=twilio)"
            )
        self.account_sid = account_sid
        self.from_number = from_number
        self.messaging_service_sid = messaging_service_sid
        self.webhook_base_url = webhook_base_url.rstrip("/") if webhook_base_url else None
        self.validity_period = validity_period
        self.lookup_skew = lookup_skew
        self.clock = clock or SystemClock()
        self._secret = SecretStr(auth_token)  # for scrubbing; a SecretStr even in vars() dumps
        self.http = EndpointHttpClient(
            base_url, pool_size=pool_size, connect_timeout=connect_timeout, read_timeout=read_timeout
        )
        self.client = Client(account_sid, auth_token, http_client=self.http)
        self._messages = self.client.api.v2010.account.messages  # built once, not lazily per thread
        self._timeouts = (connect_timeout, read_timeout)
        # The async SDK client of each event loop sending through this provider (see send_async).
        self._async: dict[asyncio.AbstractEventLoop, tuple[EndpointAsyncHttpClient, Any]] = {}
        self._async_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock | None = None) -> TwilioProvider:
        token = settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else ""
        return cls(
            settings.twilio_account_sid or "",
            token,
            from_number=settings.twilio_from_number,
            messaging_service_sid=settings.twilio_messaging_service_sid,
            base_url=settings.twilio_base_url,
            webhook_base_url=settings.webhook_base_url,
            validity_period=settings.twilio_validity_period,
            connect_timeout=settings.twilio_connect_timeout,
            read_timeout=settings.twilio_read_timeout,
            pool_size=settings.twilio_pool_size,
            lookup_skew=timedelta(seconds=settings.twilio_lookup_skew_seconds),
            clock=clock,
        )

    def __repr__(self) -> str:
        return f"TwilioProvider(account_sid={self.account_sid!r})"

    def status_callback_for(self, message: Outbound) -> str | None:
        """The message's own callback, else ``{webhook base}/twilio/status?m=<message id>``: the id
        (signed by Twilio with the URL) ties a callback to our message even when the answer to the
        create request was lost."""
        if message.status_callback:
            return message.status_callback
        if not self.webhook_base_url:
            return None
        return f"{self.webhook_base_url}{STATUS_CALLBACK_PATH}?{urlencode({'m': message.message_id})}"

    def create_params(self, message: Outbound) -> dict[str, Any]:
        params: dict[str, Any] = {"to": message.to, "body": message.body}
        sender = message.sender
        if sender and sender.startswith("MG") and len(sender) == 34:
            params["messaging_service_sid"] = sender
        elif sender:
            params["from_"] = sender
        elif self.messaging_service_sid:
            params["messaging_service_sid"] = self.messaging_service_sid
        else:
            params["from_"] = self.from_number
        callback = self.status_callback_for(message)
        if callback:
            params["status_callback"] = callback
        if self.validity_period:
            params["validity_period"] = self.validity_period
        return params

    def send(self, message: Outbound) -> Accepted:
        try:
            created = self._messages.create(**self.create_params(message))
        except Exception as exc:  # every failure is classified; none may escape unlabelled
            error = classify(exc, secret=self._secret.get_secret_value())
            log.info("twilio send of message %s: %s", message.message_id, error.text)
            raise error from None  # the cause holds the prepared request and its Authorization header
        return Accepted(
            provider_id=created.sid, status=created.status or "queued", segments=_int(created.num_segments)
        )

    async def send_async(self, message: Outbound) -> Accepted:
        """:meth:`send` through the SDK's async API (aiohttp), for the dispatcher's event-loop sender:
        a third of the sync client's CPU per message, and no thread per request in flight."""
        messages = self._async_messages()
        try:
            created = await messages.create_async(**self.create_params(message))
        except Exception as exc:  # every failure is classified; none may escape unlabelled
            error = classify(exc, secret=self._secret.get_secret_value())
            log.info("twilio send of message %s: %s", message.message_id, error.text)
            raise error from None
        return Accepted(
            provider_id=created.sid, status=created.status or "queued", segments=_int(created.num_segments)
        )

    def _async_messages(self) -> Any:
        """The running loop's SDK client (made on first use: the SDK's async client must be created
        inside the loop that uses it)."""
        loop = asyncio.get_running_loop()
        with self._async_lock:
            state = self._async.get(loop)
            if state is None:
                connect, read = self._timeouts
                http = EndpointAsyncHttpClient(self.http.endpoint, connect_timeout=connect, read_timeout=read)
                client = Client(self.account_sid, self._secret.get_secret_value(), http_client=http)
                state = self._async[loop] = (http, client.api.v2010.account.messages)
        return state[1]

    async def aclose(self) -> None:
        """Close the running loop's HTTP session (call before the loop ends)."""
        with self._async_lock:
            state = self._async.pop(asyncio.get_running_loop(), None)
        if state is not None:
            await state[0].close()

    def lookup(self, to: str, since: datetime) -> list[Found]:
        """Messages to ``to`` created at or after ``since`` (less the allowed clock skew).

        Filters on ``date_created``, not ``DateSent``: Twilio sets ``date_sent`` only once it has
        handed the message on, so a message still queued (for hours, possibly) has none, and the
        ``DateSent`` filters only work by whole days. Twilio lists newest first, so reading stops at
        the first message older than the window.
        """
        if since.tzinfo is None:
            raise ValueError("lookup needs an aware datetime")
        floor = since.astimezone(UTC) - self.lookup_skew
        found: list[Found] = []
        try:
            for n, inst in enumerate(self._messages.stream(to=to, page_size=100)):
                created = inst.date_created if isinstance(inst.date_created, datetime) else None
                if created is not None and created < floor:
                    break
                if n >= LOOKUP_MAX_RECORDS:
                    raise ProviderError(
                        f"lookup of {to}: more than {LOOKUP_MAX_RECORDS} messages since {floor.isoformat()}",
                        transient=True,
                    )
                found.append(Found(inst.sid, inst.to, inst.body, inst.status, created))
        except ProviderError:
            raise
        except Exception as exc:
            error = classify(exc, secret=self._secret.get_secret_value())
            # A failed lookup proves nothing either way: the reconciler asks again later.
            raise ProviderError(
                f"lookup failed: {error.text}",
                code=error.code,
                http_status=error.http_status,
                transient=not (
                    error.http_status and 400 <= error.http_status < 500 and error.http_status != 429
                ),
            ) from None
        return found
