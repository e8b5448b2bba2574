"""A Twilio-compatible fake of the Messages API, for tests, benchmarks and a local demo.

It speaks the real wire format (the official SDK cannot tell the difference): create, fetch and list
messages with Basic auth, Twilio's error bodies, the test-credential magic numbers, and status
callbacks signed like Twilio's. It keeps every message it accepted, so a test can count what each
phone really received, and it can misbehave on demand: throttling (429), 500 before or after
recording the message, hanging past the client's read timeout (before or after recording), latency.

Run it with ``broadcaster fake-twilio`` or from Python::

    with run_fake_twilio(latency_ms=0) as fake:      # in a thread, on a free loopback port
        provider = TwilioProvider(fake.account_sid, fake.auth_token, from_number=fake.from_number,
                                  base_url=fake.base_url)
        fake.add_fault("500-after", count=1)
        ...
        assert fake.received_count("+8613800138000") == 1

``spawn_fake_twilio()`` does the same in a subprocess (for benchmarks: no GIL shared with the client).
The control API (``/_fake/...``) is what the handle uses; it is documented in docs/twilio.md.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import random
import re
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator

from broadcaster.segments import MAX_BODY_CHARACTERS, measure

log = logging.getLogger(__name__)

API = "/2010-04-01"
DEFAULT_ACCOUNT_SID = "AC" + "0" * 31 + "1"
DEFAULT_AUTH_TOKEN = "fake-twilio-auth-token"  # noqa: S105  (a fake's credential, not a secret)
MAGIC_FROM_OK = "+15005550006"

#: Twilio's test-credential numbers: To → error code.
MAGIC_TO = {
    "+15005550001": 21211,
    "+15005550002": 21612,
    "+15005550003": 21408,
    "+15005550004": 21610,
    "+15005550009": 21614,
}
#: ... and From → error code (+15005550006 succeeds).
MAGIC_FROM = {"+15005550001": 21212, "+15005550007": 21606, "+15005550008": 21611}

ERROR_TEXT = {
    20003: "Authenticate",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    20500: "Internal Server Error",
    21211: "The 'To' number {to} is not a valid phone number.",
    21212: "The 'From' number {from_} is not a valid phone number, shortcode, or alphanumeric sender ID.",
    21408: "Permission to send an SMS has not been enabled for the region of the 'To' number: {to}.",
    21602: "Message body is required.",
    21603: "A 'From' or 'MessagingServiceSid' parameter is required to send a message.",
    21604: "A 'To' phone number is required.",
    21606: "The 'From' phone number provided is not a valid message-capable Twilio phone number.",
    21610: "Attempt to send to unsubscribed recipient",
    21611: "This 'From' number has exceeded the maximum number of queued messages",
    21612: "The 'To' phone number: {to}, is not currently reachable using the 'From' phone number.",
    21614: "'To' number is not a valid mobile number",
    21617: "The concatenated message body exceeds the 1600 character limit.",
    30003: "Unreachable destination handset",
    30005: "Unknown destination handset",
    30006: "Landline or unreachable carrier",
}
HTTP_STATUS = {20003: 401, 20404: 404, 20429: 429, 20500: 500}

FAULT_KINDS = ("429", "500", "500-after", "timeout", "timeout-after", "error")
ENDPOINTS = ("create", "fetch", "list", "any")
_PHONE = re.compile(r"^\+?[1-9]\d{5,14}$")


def now_utc() -> datetime:
    return datetime.now(UTC)


def rfc2822(dt: datetime | None) -> str | None:
    return format_datetime(dt.astimezone(UTC).replace(microsecond=0)) if dt else None


def new_sid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


def twilio_error(code: int, status: int | None = None, **fmt: Any) -> JSONResponse:
    status = status or HTTP_STATUS.get(code, 400)
    text = ERROR_TEXT.get(code, f"Error {code}")
    with suppress(KeyError, IndexError):
        text = text.format(**fmt)
    return JSONResponse(
        {
            "code": code,
            "message": text,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        status_code=status,
    )


@dataclass
class FakeConfig:
    """What the fake does; all of it can be changed at run time (``POST /_fake/config``)."""

    account_sid: str = DEFAULT_ACCOUNT_SID
    auth_token: str = DEFAULT_AUTH_TOKEN
    latency_ms: float = 0.0
    #: StatusCallback for messages created without one (None: no callbacks for those).
    callback_url: str | None = None
    #: Delay before each status step (queued → sent → final) and its callback.
    callback_delay_ms: float = 50.0
    #: Send the "queued" callback too (Twilio does when asked for all events).
    queued_callback: bool = True
    duplicate_callbacks: bool = False
    out_of_order_callbacks: bool = False
    #: Phone → "undelivered:30003" / "failed:30005": final status (and ErrorCode) for that number.
    fail_numbers: dict[str, str] = field(default_factory=dict)
    #: Move messages through their statuses at all (off for pure throughput benchmarks).
    progress: bool = True
    #: Number a Messaging Service "picks" for its messages.
    service_from: str = MAGIC_FROM_OK
    seed: int | None = None

    def update(self, changes: dict[str, Any]) -> None:
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        for key, value in changes.items():
            setattr(self, key, value)


@dataclass
class Fault:
    """A misbehaviour for matching requests: the next ``count`` ones (None: all), each with
    probability ``rate``, optionally only for one ``to`` number."""

    kind: str
    count: int | None = None
    rate: float = 1.0
    to: str | None = None
    endpoint: str = "create"
    hang_ms: float = 30_000.0
    code: int | None = None  # for kind "error"
    status: int | None = None  # for kind "error"

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}: one of {', '.join(FAULT_KINDS)}")
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {self.endpoint!r}: one of {', '.join(ENDPOINTS)}")
        if self.kind == "error" and not self.code:
            raise ValueError("fault kind 'error' needs a code (and optionally status)")


class FakeTwilio:
    """State and behaviour of the fake; :meth:`app` is its ASGI application.

    All request handling happens on one event loop; the lock guards reads by other threads
    (the control API runs on the same loop, so it needs none)."""

    def __init__(self, config: FakeConfig | None = None) -> None:
        self.initial = config or FakeConfig()
        self.config = FakeConfig(**asdict(self.initial))
        self.lock = threading.Lock()
        self.rng = random.Random(self.config.seed)  # noqa: S311  (fault dice, not security)
        self.messages: dict[str, dict[str, Any]] = {}
        self.by_to: dict[str, list[str]] = {}
        self.extras: dict[str, dict[str, Any]] = {}
        self.callbacks: list[dict[str, Any]] = []
        self.faults: list[Fault] = []
        self.stats: Counter[str] = Counter()
        self._http: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ----- state -----

    def reset(self) -> None:
        with self.lock:
            self.config = FakeConfig(**asdict(self.initial))
            self.rng = random.Random(self.config.seed)  # noqa: S311
            self.messages.clear()
            self.by_to.clear()
            self.extras.clear()
            self.callbacks.clear()
            self.faults.clear()
            self.stats.clear()
        for task in list(self._tasks):
            task.cancel()

    def record(self, sid: str) -> dict[str, Any]:
        msg = dict(self.messages[sid])
        msg.update(self.extras.get(sid, {}))
        return msg

    def snapshot(self, to: str | None = None) -> list[dict[str, Any]]:
        """Every accepted message (oldest first), with the parameters it was created with."""
        with self.lock:
            sids = self.by_to.get(to, []) if to else list(self.messages)
            return [self.record(s) for s in sids]

    # ----- faults -----

    def add_fault(self, fault: Fault) -> None:
        self.faults.append(fault)

    def take_fault(self, endpoint: str, to: str | None, kinds: tuple[str, ...]) -> Fault | None:
        for fault in self.faults:
            if fault.kind not in kinds or fault.endpoint not in (endpoint, "any"):
                continue
            if fault.to is not None and fault.to != to:
                continue
            if fault.rate < 1.0 and self.rng.random() >= fault.rate:
                continue
            if fault.count is not None:
                fault.count -= 1
                if fault.count <= 0:
                    self.faults.remove(fault)
            return fault
        return None

    async def apply_fault(self, fault: Fault | None, **fmt: Any) -> Response | None:
        if fault is None:
            return None
        self.stats[f"fault:{fault.kind}"] += 1
        if fault.kind in ("timeout", "timeout-after"):
            await asyncio.sleep(fault.hang_ms / 1000)
            return twilio_error(20500, 500)
        if fault.kind == "429":
            return twilio_error(20429, 429)
        if fault.kind in ("500", "500-after"):
            return twilio_error(20500, 500)
        assert fault.code is not None
        return twilio_error(fault.code, fault.status, **fmt)

    # ----- HTTP -----

    def authorised(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return secrets.compare_digest(user, self.config.account_sid) and secrets.compare_digest(
            password, self.config.auth_token
        )

    def check(self, request: Request) -> Response | None:
        if not self.authorised(request):
            self.stats["auth-failed"] += 1
            return twilio_error(20003, 401)
        if request.path_params["account"] != self.config.account_sid:
            return twilio_error(20404, 404)
        return None

    async def latency(self) -> None:
        if self.config.latency_ms > 0:
            await asyncio.sleep(self.config.latency_ms / 1000)

    async def create(self, request: Request) -> Response:
        arrived = time.time()  # before the body is read and before any latency: when it reached us
        refused = self.check(request)
        if refused is not None:
            return refused
        form = dict(parse_qsl((await request.body()).decode("utf-8"), keep_blank_values=True))
        to, from_, service = form.get("To", ""), form.get("From", ""), form.get("MessagingServiceSid", "")
        body = form.get("Body", "")
        await self.latency()
        fault = self.take_fault("create", to, ("429", "500", "timeout", "error"))
        response = await self.apply_fault(fault, to=to, from_=from_)
        if response is not None:
            return response
        code = self.refusal(to, from_, service, body)
        if code:
            self.stats["create-refused"] += 1
            return twilio_error(code, to=to, from_=from_)
        msg = self.accept(form, arrived)
        fault = self.take_fault("create", to, ("500-after", "timeout-after"))
        response = await self.apply_fault(fault)
        if response is not None:
            return response
        return JSONResponse(msg, status_code=201)

    def refusal(self, to: str, from_: str, service: str, body: str) -> int | None:
        if not to:
            return 21604
        if not (from_ or service):
            return 21603
        if not body:
            return 21602
        if to in MAGIC_TO:
            return MAGIC_TO[to]
        if from_ in MAGIC_FROM:
            return MAGIC_FROM[from_]
        if not _PHONE.match(to):
            return 21211
        if len(body) > MAX_BODY_CHARACTERS:
            return 21617
        return None

    def accept(self, form: dict[str, str], arrived: float | None = None) -> dict[str, Any]:
        now = now_utc()
        sid = new_sid("SM")
        account = self.config.account_sid
        service = form.get("MessagingServiceSid") or None
        msg: dict[str, Any] = {
            "account_sid": account,
            "api_version": "2010-04-01",
            "body": form["Body"],
            "date_created": rfc2822(now),
            "date_sent": None,
            "date_updated": rfc2822(now),
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": form.get("From") or None,
            "messaging_service_sid": service,
            "num_media": "0",
            "num_segments": str(measure(form["Body"]).segments),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "accepted" if service and not form.get("From") else "queued",
            "subresource_uris": {"media": f"{API}/Accounts/{account}/Messages/{sid}/Media.json"},
            "to": form["To"],
            "uri": f"{API}/Accounts/{account}/Messages/{sid}.json",
        }
        callback = form.get("StatusCallback") or self.config.callback_url
        with self.lock:
            self.messages[sid] = msg
            self.by_to.setdefault(msg["to"], []).append(sid)
            self.extras[sid] = {
                "status_callback": form.get("StatusCallback"),
                "validity_period": form.get("ValidityPeriod"),
                "created_ts": now.timestamp(),
                "received_ts": arrived if arrived is not None else now.timestamp(),
            }
        self.stats["created"] += 1
        if self.config.progress:
            self.spawn(self.progress(sid, callback))
        return dict(msg)

    async def fetch(self, request: Request) -> Response:
        refused = self.check(request)
        if refused is not None:
            return refused
        await self.latency()
        sid = request.path_params["sid"]
        response = await self.apply_fault(self.take_fault("fetch", None, FAULT_KINDS))
        if response is not None:
            return response
        msg = self.messages.get(sid)
        if msg is None:
            return twilio_error(20404, 404)
        return JSONResponse(msg)

    async def list(self, request: Request) -> Response:
        refused = self.check(request)
        if refused is not None:
            return refused
        await self.latency()
        q = request.query_params
        response = await self.apply_fault(self.take_fault("list", q.get("To"), FAULT_KINDS))
        if response is not None:
            return response
        try:
            page_size = max(1, min(1000, int(q.get("PageSize", "50"))))
            page = int(q.get("Page", "0"))
            sent_on, sent_before, sent_after = (
                _day(q.get(k)) for k in ("DateSent", "DateSent<", "DateSent>")
            )
        except ValueError:
            return JSONResponse(
                {"code": 20001, "message": "Invalid date or page value", "more_info": "", "status": 400},
                status_code=400,
            )
        to, from_ = q.get("To"), q.get("From")
        with self.lock:
            sids = self.by_to.get(to, []) if to else list(self.messages)
            candidates = [self.messages[s] for s in reversed(sids)]  # newest first, like Twilio
        selected = []
        for msg in candidates:
            if from_ and msg["from"] != from_:
                continue
            if sent_on or sent_before or sent_after:
                # Like Twilio: DateSent filters by whole days, and a message not sent yet has no date.
                sent = msg["date_sent"] and _rfc_day(msg["date_sent"])
                if not sent:
                    continue
                if (
                    (sent_on and sent != sent_on)
                    or (sent_before and sent > sent_before)
                    or (sent_after and sent < sent_after)
                ):
                    continue
            selected.append(msg)
        token = q.get("PageToken")
        start = 0
        if token and token.startswith("PA"):
            after = token[2:]
            for i, msg in enumerate(selected):
                if msg["sid"] == after:
                    start = i + 1
                    break
        items = selected[start : start + page_size]
        base = f"{API}/Accounts/{self.config.account_sid}/Messages.json"
        keep = [(k, v) for k, v in q.multi_items() if k not in ("Page", "PageToken", "PageSize")]
        next_uri = None
        if start + page_size < len(selected) and items:
            next_q = [
                *keep,
                ("PageSize", str(page_size)),
                ("Page", str(page + 1)),
                ("PageToken", "PA" + items[-1]["sid"]),
            ]
            next_uri = f"{base}?{urlencode(next_q)}"
        first_uri = f"{base}?{urlencode([*keep, ('PageSize', str(page_size)), ('Page', '0')])}"
        return JSONResponse(
            {
                "messages": items,
                "end": start + len(items) - 1 if items else 0,
                "first_page_uri": first_uri,
                "next_page_uri": next_uri,
                "page": page,
                "page_size": page_size,
                "previous_page_uri": None,
                "start": start,
                "uri": f"{base}?{request.url.query}" if request.url.query else base,
            }
        )

    # ----- status progression and callbacks -----

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def final_for(self, to: str) -> tuple[str, int | None]:
        rule = self.config.fail_numbers.get(to)
        if not rule:
            return "delivered", None
        status, _, code = rule.partition(":")
        return status, int(code) if code else (30003 if status == "undelivered" else 30005)

    async def progress(self, sid: str, callback: str | None) -> None:
        """Move the message queued → sent → final, one step per ``callback_delay_ms``, posting a
        callback for each (the callbacks may be duplicated or out of order; the status is not)."""
        msg = self.messages[sid]
        final, code = self.final_for(msg["to"])
        pending: list[tuple[str, int | None]] = [("sent", None), (final, code)]
        posts = list(pending)
        if self.config.out_of_order_callbacks:
            posts.reverse()
        if self.config.queued_callback:
            posts.insert(0, (msg["status"], None))
        if self.config.duplicate_callbacks:
            posts = [p for p in posts for _ in (0, 1)]
        delay = self.config.callback_delay_ms / 1000
        for status, err in posts:
            await asyncio.sleep(delay)
            if status not in ("queued", "accepted") and pending:
                self.set_status(sid, *pending.pop(0))
            if callback:
                await self.post_callback(sid, callback, status, err)
        for status, err in pending:
            self.set_status(sid, status, err)

    def set_status(self, sid: str, status: str, error_code: int | None) -> None:
        msg = self.messages.get(sid)
        if msg is None:
            return
        order = ("accepted", "queued", "sending", "sent", "delivered", "undelivered", "failed")
        if order.index(status) <= order.index(msg["status"]):
            return
        now = rfc2822(now_utc())
        with self.lock:
            msg["status"] = status
            msg["date_updated"] = now
            if status == "sent":
                msg["date_sent"] = now
                if msg["from"] is None:
                    msg["from"] = self.config.service_from
            if error_code:
                msg["error_code"] = error_code
                msg["error_message"] = ERROR_TEXT.get(error_code)

    def callback_params(self, msg: dict[str, Any], status: str, error_code: int | None) -> dict[str, str]:
        params = {
            "AccountSid": msg["account_sid"],
            "ApiVersion": "2010-04-01",
            "From": msg["from"] or self.config.service_from,
            "MessageSid": msg["sid"],
            "MessageStatus": status,
            "SmsSid": msg["sid"],
            "SmsStatus": status,
            "To": msg["to"],
        }
        if msg["messaging_service_sid"]:
            params["MessagingServiceSid"] = msg["messaging_service_sid"]
        if error_code:
            params["ErrorCode"] = str(error_code)
        return params

    async def post_signed(self, url: str, params: dict[str, str]) -> tuple[int | None, str]:
        """POST a form signed with X-Twilio-Signature, as Twilio does; returns (status, body or error)."""
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=15.0)
        signature = RequestValidator(self.config.auth_token).compute_signature(url, params)
        try:
            response = await self._http.post(
                url,
                data=params,
                headers={"X-Twilio-Signature": signature, "User-Agent": "TwilioProxy/1.1"},
            )
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        return response.status_code, response.text

    async def post_callback(self, sid: str, url: str, status: str, error_code: int | None) -> None:
        params = self.callback_params(self.messages[sid], status, error_code)
        code, text = await self.post_signed(url, params)
        entry = {"sid": sid, "status": status, "error_code": error_code, "url": url, "http_status": code}
        if code is None:
            entry["error"] = text
        with self.lock:
            self.callbacks.append(entry)
        self.stats["callbacks"] += 1

    # ----- control API -----

    async def c_messages(self, request: Request) -> Response:
        return JSONResponse({"messages": self.snapshot(request.query_params.get("to"))})

    async def c_callbacks(self, request: Request) -> Response:
        with self.lock:
            return JSONResponse({"callbacks": list(self.callbacks)})

    async def c_stats(self, request: Request) -> Response:
        return JSONResponse({"stats": dict(self.stats), "pending_tasks": len(self._tasks)})

    async def c_faults(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.faults.clear()
        elif request.method == "POST":
            try:
                self.add_fault(Fault(**(await request.json())))
            except (TypeError, ValueError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"faults": [asdict(f) for f in self.faults]})

    async def c_config(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                self.config.update(await request.json())
            except ValueError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
        out = asdict(self.config)
        out.pop("auth_token")
        return JSONResponse(out)

    async def c_reset(self, request: Request) -> Response:
        self.reset()
        return JSONResponse({"reset": True})

    async def c_inbound(self, request: Request) -> Response:
        """Deliver an inbound SMS to a webhook, signed like Twilio: {url, from, to, body}."""
        spec = await request.json()
        body = spec["body"]
        params = {
            "AccountSid": self.config.account_sid,
            "ApiVersion": "2010-04-01",
            "Body": body,
            "From": spec["from"],
            "MessageSid": new_sid("SM"),
            "NumMedia": "0",
            "NumSegments": str(measure(body).segments),
            "SmsMessageSid": "",
            "SmsStatus": "received",
            "To": spec.get("to") or self.config.service_from,
        }
        params["SmsMessageSid"] = params["MessageSid"]
        if spec.get("sid"):
            params["MessageSid"] = params["SmsMessageSid"] = spec["sid"]
        code, text = await self.post_signed(spec["url"], params)
        return JSONResponse({"sid": params["MessageSid"], "http_status": code, "response": text})

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        yield
        await self.shutdown()

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._http is not None:
            await self._http.aclose()

    def app(self) -> Starlette:
        base = API + "/Accounts/{account}"
        return Starlette(
            routes=[
                Route(base + "/Messages.json", self.create, methods=["POST"]),
                Route(base + "/Messages.json", self.list, methods=["GET"]),
                Route(base + "/Messages/{sid}.json", self.fetch, methods=["GET"]),
                Route("/_fake/messages", self.c_messages, methods=["GET"]),
                Route("/_fake/callbacks", self.c_callbacks, methods=["GET"]),
                Route("/_fake/stats", self.c_stats, methods=["GET"]),
                Route("/_fake/faults", self.c_faults, methods=["GET", "POST", "DELETE"]),
                Route("/_fake/config", self.c_config, methods=["GET", "POST"]),
                Route("/_fake/reset", self.c_reset, methods=["POST"]),
                Route("/_fake/inbound", self.c_inbound, methods=["POST"]),
            ],
            lifespan=self.lifespan,
        )


def _day(value: str | None) -> str | None:
    """A DateSent filter value (``YYYY-MM-DD`` or an ISO date-time, as the SDK sends) → its day."""
    if not value:
        return None
    day = value[:10]
    datetime.strptime(day, "%Y-%m-%d")  # raises ValueError
    return day


def _rfc_day(value: str) -> str:
    from email.utils import parsedate_to_datetime

    return parsedate_to_datetime(value).astimezone(UTC).strftime("%Y-%m-%d")


# ----- the handle tests and benchmarks use -----


class FakeTwilioHandle:
    """Talks to a running fake (thread or subprocess) through its control API."""

    def __init__(self, base_url: str, account_sid: str, auth_token: str) -> None:
        self.base_url = base_url
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.from_number = MAGIC_FROM_OK
        self.pid: int | None = None  # the server's process when spawned
        self._http = httpx.Client(base_url=base_url, timeout=30.0)

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise ValueError(f"fake twilio {method} {path}: {response.status_code} {response.text}")
        return response.json()

    def env(self) -> dict[str, str]:
        """Environment variables that point a ``broadcaster`` process at this fake."""
        return {
            "BROADCASTER_PROVIDER": "twilio",
            "TWILIO_ACCOUNT_SID": self.account_sid,
            "TWILIO_AUTH_TOKEN": self.auth_token,
            "TWILIO_FROM_NUMBER": self.from_number,
            "BROADCASTER_TWILIO_BASE_URL": self.base_url,
        }

    def messages(self, to: str | None = None) -> list[dict[str, Any]]:
        """Every message the fake accepted (oldest first), optionally to one number."""
        return self._call("GET", "/_fake/messages", params={"to": to} if to else None)["messages"]

    def received_count(self, to: str) -> int:
        return len(self.messages(to))

    def counts(self) -> Counter[str]:
        """How many messages each phone received."""
        return Counter(m["to"] for m in self.messages())

    def callbacks(self) -> list[dict[str, Any]]:
        return self._call("GET", "/_fake/callbacks")["callbacks"]

    def stats(self) -> dict[str, int]:
        return self._call("GET", "/_fake/stats")["stats"]

    def add_fault(self, kind: str, **options: Any) -> list[dict[str, Any]]:
        """``kind``: 429, 500, 500-after, timeout, timeout-after, error; options: count, rate, to,
        endpoint (create/fetch/list/any), hang_ms, code, status."""
        return self._call("POST", "/_fake/faults", json={"kind": kind, **options})["faults"]

    def clear_faults(self) -> None:
        self._call("DELETE", "/_fake/faults")

    def configure(self, **changes: Any) -> dict[str, Any]:
        return self._call("POST", "/_fake/config", json=changes)

    def reset(self) -> None:
        self._call("POST", "/_fake/reset")

    def inbound(self, url: str, from_: str, body: str, to: str | None = None, sid: str | None = None) -> dict:
        """Have the fake deliver an inbound SMS to ``url``, signed like Twilio."""
        return self._call(
            "POST", "/_fake/inbound", json={"url": url, "from": from_, "to": to, "body": body, "sid": sid}
        )

    def wait_for_callbacks(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until at least ``n`` callbacks were posted (and answered)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.callbacks()
            if len(got) >= n or time.monotonic() > deadline:
                return got
            time.sleep(0.02)


@contextmanager
def run_fake_twilio(**config: Any) -> Iterator[FakeTwilioHandle]:
    """Run the fake in a background thread on a free loopback port (options: :class:`FakeConfig`)."""
    from broadcaster.serving import serve_in_thread

    fake = FakeTwilio(FakeConfig(**config))
    with serve_in_thread(fake.app()) as base_url:
        handle = FakeTwilioHandle(base_url, fake.config.account_sid, fake.config.auth_token)
        handle.server = fake  # type: ignore[attr-defined]  # direct access for in-process callers
        try:
            yield handle
        finally:
            handle.close()


@contextmanager
def spawn_fake_twilio(
    *,
    latency_ms: float = 0.0,
    extra_args: list[str] | None = None,
    account_sid: str = DEFAULT_ACCOUNT_SID,
    auth_token: str = DEFAULT_AUTH_TOKEN,
) -> Iterator[FakeTwilioHandle]:
    """Run the fake as ``python -m broadcaster fake-twilio --port 0`` (its own process and GIL).
    Its credentials are the given ones, never real ones inherited from this environment."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "BROADCASTER_TWILIO_"))}
    child_env.update(TWILIO_ACCOUNT_SID=account_sid, TWILIO_AUTH_TOKEN=auth_token)
    args = [
        sys.executable,
        "-m",
        "broadcaster",
        "fake-twilio",
        "--port",
        "0",
        "--latency-ms",
        str(latency_ms),
    ]
    proc = subprocess.Popen([*args, *(extra_args or [])], stdout=subprocess.PIPE, env=child_env, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fake-twilio exited with {proc.wait()}")
        ready = json.loads(line)
        handle = FakeTwilioHandle(ready["base_url"], ready["account_sid"], child_env["TWILIO_AUTH_TOKEN"])
        handle.pid = proc.pid
        try:
            yield handle
        finally:
            handle.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
