"""The webhooks app Twilio calls: delivery status callbacks, inbound replies, and a health check.

Every Twilio request must carry a valid ``X-Twilio-Signature`` (HMAC of the URL Twilio called and
the form, keyed with the auth token); anything else gets 403 and changes nothing. Behind a proxy the
URL Twilio called is not the one this server sees, so it is rebuilt from
``BROADCASTER_WEBHOOK_BASE_URL`` + path (+ query).

Built by :func:`create_app` from settings, engine and clock (no globals), so tests make their own.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from twilio.request_validator import RequestValidator, get_signature_algorithm
from twilio.twiml.messaging_response import MessagingResponse

from broadcaster import db
from broadcaster.clock import Clock
from broadcaster.replies import ReplyResult, handle_reply
from broadcaster.settings import Settings
from broadcaster.status_updates import apply_status_callback

log = logging.getLogger(__name__)

STATUS_PATH = "/twilio/status"
INBOUND_PATH = "/twilio/inbound"


class WebhookConfigError(Exception):
    """The webhooks cannot run safely with these settings."""


def create_app(settings: Settings, engine: Engine, clock: Clock) -> FastAPI:
    if settings.twilio_auth_token is None or not settings.twilio_auth_token.get_secret_value():
        raise WebhookConfigError(
            "TWILIO_AUTH_TOKEN is not set: Twilio's webhook signatures cannot be checked"
        )
    validator = RequestValidator(settings.twilio_auth_token.get_secret_value())
    public_base = settings.webhook_base_url.rstrip("/") if settings.webhook_base_url else None

    app = FastAPI(title="broadcaster webhooks", docs_url=None, redoc_url=None, openapi_url=None)

    def public_url(request: Request) -> str:
        if public_base is None:
            return str(request.url)
        query = request.url.query
        return public_base + request.url.path + (f"?{query}" if query else "")

    async def signed_form(request: Request) -> FormData | None:
        """The request's form if its signature is valid, else None."""
        form = await request.form()
        signature = request.headers.get("X-Twilio-Signature")
        if not signature:
            log.warning("%s without X-Twilio-Signature refused", request.url.path)
            return None
        algorithm = get_signature_algorithm(request.headers.get("X-Twilio-Webhooks-Signature-Settings"))
        if not validator.validate(public_url(request), form, signature, algorithm):
            log.warning(
                "%s with an invalid signature refused (checked against %s)",
                request.url.path,
                public_url(request),
            )
            return None
        return form

    def forbidden() -> Response:
        return JSONResponse({"error": "invalid or missing X-Twilio-Signature"}, status_code=403)

    @app.post(STATUS_PATH)
    async def status_callback(request: Request) -> Response:
        form = await signed_form(request)
        if form is None:
            return forbidden()
        sid = str(form.get("MessageSid") or form.get("SmsSid") or "")
        status = str(form.get("MessageStatus") or form.get("SmsStatus") or "")
        if not sid or not status:
            return JSONResponse({"error": "MessageSid and MessageStatus are required"}, status_code=400)
        raw_id = request.query_params.get("m", "")
        message_id = int(raw_id) if raw_id.isdigit() else None

        def apply() -> dict[str, Any]:
            with db.writing(engine) as conn:
                return apply_status_callback(
                    conn,
                    clock,
                    sid=sid,
                    status=status,
                    error_code=str(form.get("ErrorCode") or "") or None,
                    message_id=message_id,
                    to=str(form.get("To") or "") or None,
                ).as_dict()

        return JSONResponse(await run_in_threadpool(apply))

    @app.post(INBOUND_PATH)
    async def inbound(request: Request) -> Response:
        form = await signed_form(request)
        if form is None:
            return forbidden()
        sid = str(form.get("MessageSid") or form.get("SmsMessageSid") or "")
        sender = str(form.get("From") or "")
        if not sid or not sender:
            return JSONResponse({"error": "MessageSid and From are required"}, status_code=400)

        def handle() -> ReplyResult:
            for attempt in (1, 2):  # a concurrent retry of the same message may win the insert
                try:
                    with db.writing(engine) as conn:
                        return handle_reply(
                            conn,
                            clock,
                            sid=sid,
                            from_number=sender,
                            to_number=str(form.get("To") or "") or None,
                            body=str(form.get("Body") or ""),
                            help_text=settings.help_reply,
                            optout_text=settings.optout_reply,
                        )
                except sa.exc.IntegrityError:
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

        result = await run_in_threadpool(handle)
        log.info("inbound %s: %s%s", sid, result.action, " (repeat)" if result.duplicate else "")
        twiml = MessagingResponse()
        if result.reply:
            twiml.message(result.reply)
        return Response(str(twiml), media_type="application/xml")

    @app.get("/healthz")
    def healthz() -> Response:
        try:
            with db.reading(engine) as conn:
                conn.execute(sa.text("SELECT 1"))
        except Exception as exc:  # any failure to reach the database is "not healthy"
            log.warning("healthz: database unreachable: %s", type(exc).__name__)
            return JSONResponse({"ok": False, "database": "unreachable"}, status_code=503)
        return JSONResponse({"ok": True, "database": "ok"})

    return app
