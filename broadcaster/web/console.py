"""The audit console: a read-only web front end for audit staff (FastAPI, server-rendered Jinja2).

Every page and export needs a session (login with a console account, ``broadcaster users add``).
Roles: ``auditor`` reads with masked numbers; ``supervisor`` may also unmask and export, and every
unmasked view and export is recorded in the action trail. Forms carry a per-session CSRF token.

Run alone with ``broadcaster console serve``, or mount into another FastAPI app::

    app.mount("/console", create_console_app(settings, engine, clock))
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from sqlalchemy.engine import Engine
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from broadcaster import accounts, db
from broadcaster.audit import chain, exports, queries
from broadcaster.audit.queries import ActionFilter, FilterError, MessageFilter
from broadcaster.audit.report import ReportError, render_report_html, run_report
from broadcaster.clock import Clock, SystemClock
from broadcaster.models import MESSAGE_STATES, ROLE_SUPERVISOR, RUN_STATES, Message, Run
from broadcaster.settings import Settings
from broadcaster.templating import TemplateStore
from broadcaster.trail import record_action
from broadcaster.web.render import STATIC, environment

SESSION_COOKIE = "bc_console_session"
LOGIN_CSRF_COOKIE = "bc_console_login"
PAGE = 100
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
ROUTES = {
    "runs": "/",
    "run": "/runs/{run_id}",
    "run_report": "/runs/{run_id}/report.html",
    "messages": "/messages",
    "message": "/messages/{message_id}",
    "trail": "/trail",
    "exports": "/exports",
    "verify": "/verify",
    "login": "/login",
    "logout": "/logout",
    "static_css": "/static/console.css",
}
MEDIA_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "jsonl": "application/x-ndjson",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}


@dataclass
class Console:
    settings: Settings
    engine: Engine
    clock: Clock

    # --- plumbing ---------------------------------------------------------------------------------

    def url(self, request: Request, name: str, **params: Any) -> str:
        return request.scope.get("root_path", "").rstrip("/") + ROUTES[name].format(**params)

    def page(self, request: Request, template: str, *, status: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("error", None)
        context.setdefault("session", None)
        html = (
            environment(self.settings.tz)
            .get_template(template)
            .render(url=lambda name, **p: self.url(request, name, **p), **context)
        )
        return HTMLResponse(html, status_code=status)

    def cookie_path(self, request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/") + "/"

    def client(self, request: Request) -> str | None:
        return request.client.host if request.client else None

    def session(self, request: Request) -> accounts.Session:
        """The request's live session, or a redirect to the login page."""
        now = self.clock.now()
        with db.reading(self.engine) as conn:
            found = accounts.find_session(
                conn,
                request.cookies.get(SESSION_COOKIE),
                now=now,
                idle=timedelta(minutes=self.settings.console_idle_minutes),
            )
        if found is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            login = self.url(request, "login") + "?" + urlencode({"next": target})
            raise HTTPException(status_code=303, headers={"Location": login})
        if found.needs_touch(now):
            with db.writing(self.engine) as conn:
                accounts.touch_session(conn, found.id, now=now)
        return found

    def check_csrf(self, session: accounts.Session, token: str) -> None:
        if not hmac.compare_digest(session.csrf_token.encode(), (token or "").encode()):
            raise HTTPException(status_code=403, detail="CSRF token missing or wrong: reload the page")

    def require_supervisor(self, session: accounts.Session, what: str) -> None:
        if session.role != ROLE_SUPERVISOR:
            raise HTTPException(status_code=403, detail=f"{what} needs the supervisor role")

    def record(
        self, request: Request, session: accounts.Session, action: str, details: dict[str, Any]
    ) -> None:
        with db.writing(self.engine) as conn:
            record_action(
                conn,
                at=self.clock.now(),
                actor=session.user,
                host=self.client(request),
                action=action,
                details={**details, "via": "console"},
            )

    def message_filter(self, params: dict[str, str]) -> MessageFilter:
        zone = self.settings.tz
        return MessageFilter(
            run_id=_int(params.get("run"), "run"),
            campaign=params.get("campaign") or None,
            statuses=[params["status"]] if params.get("status") else [],
            phone=params.get("phone") or None,
            error_code=params.get("error_code") or None,
            since=queries.parse_when(params.get("since"), zone, name="since"),
            until=queries.parse_when(params.get("until"), zone, end=True, name="until"),
        )

    def action_filter(self, params: dict[str, str]) -> ActionFilter:
        zone = self.settings.tz
        return ActionFilter(
            action=params.get("action") or None,
            actor=params.get("actor") or None,
            run_id=_int(params.get("run"), "run"),
            since=queries.parse_when(params.get("since"), zone, name="since"),
            until=queries.parse_when(params.get("until"), zone, end=True, name="until"),
        )

    def wants_unmask(self, request: Request, session: accounts.Session) -> bool:
        if request.query_params.get("unmask") not in ("1", "true", "on"):
            return False
        self.require_supervisor(session, "Unmasking phone numbers")
        return True


def _int(value: str | None, name: str) -> int | None:
    if value is None or not str(value).strip():
        return None
    try:
        return int(str(value).strip().lstrip("#"))
    except ValueError as exc:
        raise FilterError(f"{name} {value!r}: expected a number") from exc


def _safe_next(console: Console, request: Request, target: str | None) -> str:
    base = console.cookie_path(request)
    if target and target.startswith(base) and not target.startswith("//") and "\\" not in target:
        return target
    return console.url(request, "runs")


def console_router(console: Console) -> APIRouter:
    router = APIRouter()
    Session = Depends(console.session)

    def login_page(request: Request, *, next_url: str, **extra: Any) -> Response:
        """The login form with a fresh CSRF token, set in its cookie too (double submit)."""
        token = secrets.token_urlsafe(24)
        response = console.page(request, "login.html", login_csrf=token, next_url=next_url, **extra)
        response.set_cookie(
            LOGIN_CSRF_COOKIE,
            token,
            httponly=True,
            samesite="lax",
            secure=console.settings.console_secure_cookies,
            path=console.cookie_path(request),
        )
        return response

    @router.get(ROUTES["static_css"], include_in_schema=False)
    def static_css() -> FileResponse:
        return FileResponse(STATIC / "console.css", media_type="text/css")

    @router.get(ROUTES["login"], response_class=HTMLResponse)
    def login_form(request: Request, next: str = "") -> Response:
        return login_page(request, next_url=next)

    @router.post(ROUTES["login"])
    def login(
        request: Request,
        username: str = Form(""),
        password: str = Form(""),
        csrf_token: str = Form(""),
        next: str = Form(""),
    ) -> Response:
        expected = request.cookies.get(LOGIN_CSRF_COOKIE) or ""
        if not expected or not hmac.compare_digest(expected.encode(), csrf_token.encode()):
            raise HTTPException(status_code=403, detail="login form expired: reload the login page")
        with db.reading(console.engine) as conn:
            user = accounts.authenticate(conn, username, password)
        now = console.clock.now()
        with db.writing(console.engine) as conn:
            if user is None:
                record_action(
                    conn,
                    at=now,
                    actor=username[:100] or "?",
                    host=console.client(request),
                    action="console.login_failed",
                    details={"user": username[:100]},
                )
            else:
                token, _csrf = accounts.create_session(
                    conn,
                    user["id"],
                    now=now,
                    lifetime=timedelta(minutes=console.settings.console_session_minutes),
                    client=console.client(request),
                )
                record_action(
                    conn,
                    at=now,
                    actor=user["name"],
                    host=console.client(request),
                    action="console.login",
                    details={"user": user["name"], "role": user["role"]},
                )
        if user is None:
            return login_page(request, next_url=next, status=401, error="Wrong user name or password.")
        response = RedirectResponse(_safe_next(console, request, next), status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            token,
            max_age=console.settings.console_session_minutes * 60,
            httponly=True,
            samesite="lax",
            secure=console.settings.console_secure_cookies,
            path=console.cookie_path(request),
        )
        response.delete_cookie(LOGIN_CSRF_COOKIE, path=console.cookie_path(request))
        return response

    @router.post(ROUTES["logout"])
    def logout(request: Request, session: accounts.Session = Session, csrf_token: str = Form("")) -> Response:
        console.check_csrf(session, csrf_token)
        with db.writing(console.engine) as conn:
            accounts.end_session(conn, session.id)
            record_action(
                conn,
                at=console.clock.now(),
                actor=session.user,
                host=console.client(request),
                action="console.logout",
                details={"user": session.user},
            )
        response = RedirectResponse(console.url(request, "login"), status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=console.cookie_path(request))
        return response

    @router.get(ROUTES["runs"], response_class=HTMLResponse)
    def runs(
        request: Request,
        session: accounts.Session = Session,
        campaign: str = "",
        status: str = "",
        before: int | None = None,
    ) -> Response:
        import sqlalchemy as sa

        runs_t, messages_t = Run.__table__, Message.__table__
        cond = []
        if campaign:
            cond.append(runs_t.c.campaign_id == campaign)
        if status:
            cond.append(runs_t.c.status == status)
        if before is not None:
            cond.append(runs_t.c.id < before)
        with db.reading(console.engine) as conn:
            rows = [
                dict(r)
                for r in conn.execute(
                    sa.select(runs_t).where(*cond).order_by(runs_t.c.id.desc()).limit(PAGE)
                ).mappings()
            ]
            counts: dict[int, dict[str, int]] = {}
            if rows:
                for run_id, state, n in conn.execute(
                    sa.select(messages_t.c.run_id, messages_t.c.status, sa.func.count())
                    .where(messages_t.c.run_id.in_([r["id"] for r in rows]))
                    .group_by(messages_t.c.run_id, messages_t.c.status)
                ).all():
                    counts.setdefault(run_id, {})[state] = n
        for r in rows:
            by_state = counts.get(r["id"], {})
            r["counts"] = {s: by_state[s] for s in MESSAGE_STATES if s in by_state}
        next_before = rows[-1]["id"] if len(rows) == PAGE else None
        next_url = None
        if next_before:
            query = urlencode({"campaign": campaign, "status": status, "before": next_before})
            next_url = console.url(request, "runs") + "?" + query
        return console.page(
            request,
            "runs.html",
            session=session,
            page="runs",
            runs=rows,
            run_states=RUN_STATES,
            filters={"campaign": campaign, "status": status},
            next_before=next_before,
            next_url=next_url,
        )

    def _report(run_id: int) -> dict[str, Any]:
        with db.reading(console.engine) as conn:
            try:
                return run_report(
                    conn,
                    run_id,
                    zone=console.settings.tz,
                    cost_per_segment=console.settings.cost_per_segment,
                    currency=console.settings.cost_currency,
                    store=TemplateStore(console.settings.templates_dir),
                )
            except ReportError as exc:
                raise HTTPException(status_code=404, detail=str(exc)) from exc

    @router.get(ROUTES["run"], response_class=HTMLResponse)
    def run(request: Request, run_id: int, session: accounts.Session = Session) -> Response:
        return console.page(request, "run.html", session=session, page="runs", report=_report(run_id))

    @router.get(ROUTES["run_report"])
    def run_report_file(request: Request, run_id: int, session: accounts.Session = Session) -> Response:
        html = render_report_html(
            _report(run_id), generated_at=console.clock.now(), generated_by=session.user
        )
        digest = hashlib.sha256(html.encode("utf-8")).hexdigest()
        console.record(request, session, "audit.reported", {"run_id": run_id, "sha256": digest})
        return HTMLResponse(
            html,
            headers={
                "Content-Disposition": f'attachment; filename="run-{run_id}-report.html"',
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
            },
        )

    @router.get(ROUTES["messages"], response_class=HTMLResponse)
    def messages(request: Request, session: accounts.Session = Session) -> Response:
        params = dict(request.query_params)
        context: dict[str, Any] = {
            "session": session,
            "page": "messages",
            "form": params,
            "message_states": MESSAGE_STATES,
            "messages": [],
            "total": 0,
            "unmask": False,
            "next_url": None,
        }
        try:
            unmask = console.wants_unmask(request, session)
            flt = console.message_filter(params)
            before = _int(params.get("before"), "before")
            region = console.settings.default_region
            with db.reading(console.engine) as conn:
                rows = queries.list_messages(conn, flt, region=region, limit=PAGE, before_id=before)
                total = queries.count_messages(conn, flt, region=region)
        except FilterError as exc:
            return console.page(request, "messages.html", status=400, error=str(exc), **context)
        if unmask:
            console.record(request, session, "audit.unmasked", {"page": "messages", "filters": flt.as_dict()})
        if not unmask:
            rows = [queries.masked_message(m) for m in rows]
        if len(rows) == PAGE:
            query = {k: v for k, v in params.items() if k != "before"}
            query["before"] = str(rows[-1]["id"])
            context["next_url"] = console.url(request, "messages") + "?" + urlencode(query)
        context.update(messages=rows, total=total, unmask=unmask)
        return console.page(request, "messages.html", **context)

    @router.get(ROUTES["message"], response_class=HTMLResponse)
    def message(request: Request, message_id: int, session: accounts.Session = Session) -> Response:
        unmask = console.wants_unmask(request, session)
        with db.reading(console.engine) as conn:
            history = queries.message_history(conn, message_id)
        if history is None:
            raise HTTPException(status_code=404, detail=f"message {message_id} not found")
        if unmask:
            console.record(request, session, "audit.unmasked", {"page": "message", "message_id": message_id})
        else:
            history = queries.masked_history(history)
        return console.page(request, "message.html", session=session, page="messages", h=history)

    @router.get(ROUTES["trail"], response_class=HTMLResponse)
    def trail(request: Request, session: accounts.Session = Session) -> Response:
        params = dict(request.query_params)
        context: dict[str, Any] = {
            "session": session,
            "page": "trail",
            "form": params,
            "actions": [],
            "next_url": None,
        }
        try:
            flt = console.action_filter(params)
            before = _int(params.get("before"), "before")
            with db.reading(console.engine) as conn:
                rows = queries.list_actions(conn, flt, limit=PAGE, before_id=before)
        except FilterError as exc:
            return console.page(request, "trail.html", status=400, error=str(exc), **context)
        rows = [queries.masked_action(a) for a in rows]
        if len(rows) == PAGE:
            query = {k: v for k, v in params.items() if k != "before"}
            query["before"] = str(rows[-1]["id"])
            context["next_url"] = console.url(request, "trail") + "?" + urlencode(query)
        context["actions"] = rows
        return console.page(request, "trail.html", **context)

    @router.get(ROUTES["exports"], response_class=HTMLResponse)
    def export_form(request: Request, session: accounts.Session = Session) -> Response:
        console.require_supervisor(session, "Exporting")
        return console.page(
            request,
            "exports.html",
            session=session,
            page="exports",
            form=dict(request.query_params),
            formats=exports.FORMATS,
            message_states=MESSAGE_STATES,
        )

    @router.post(ROUTES["exports"])
    async def export(request: Request, session: accounts.Session = Session) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        console.check_csrf(session, form.get("csrf_token", ""))
        console.require_supervisor(session, "Exporting")
        what, fmt = form.get("what", "messages"), form.get("format", "csv")
        if what not in exports.WHAT or fmt not in exports.FORMATS:
            raise HTTPException(status_code=400, detail="choose what to export and a format")
        try:
            flt = console.message_filter(form) if what == "messages" else console.action_filter(form)
        except FilterError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        stamp = console.clock.now().strftime("%Y%m%dT%H%M%SZ")
        folder = Path(tempfile.mkdtemp(prefix="bc-export-"))
        path = folder / f"{what}-{stamp}.{fmt}"

        def _run() -> exports.ExportResult:
            return exports.export(
                console.engine,
                what=what,
                flt=flt,
                fmt=fmt,
                path=path,
                unmask=form.get("unmask") in ("1", "on", "true"),
                actor=session.user,
                clock=console.clock,
                region=console.settings.default_region,
                zone=console.settings.tz,
                host=console.client(request),
                via="console",
            )

        from starlette.concurrency import run_in_threadpool

        try:
            await run_in_threadpool(_run)
        except Exception:
            _cleanup(folder)
            raise
        return FileResponse(
            path, media_type=MEDIA_TYPES[fmt], filename=path.name, background=BackgroundTask(_cleanup, folder)
        )

    @router.get(ROUTES["verify"], response_class=HTMLResponse)
    def verify(request: Request, session: accounts.Session = Session) -> Response:
        report = chain.verify(console.engine, seal=False)
        return console.page(
            request,
            "verify.html",
            session=session,
            page="verify",
            report=report,
            checked_at=console.clock.now(),
        )

    return router


def _cleanup(folder: Path) -> None:
    for child in folder.iterdir():
        child.unlink(missing_ok=True)
    folder.rmdir()


def create_console_app(settings: Settings, engine: Engine, clock: Clock | None = None) -> FastAPI:
    """The console as an app of its own (serve it, or ``mount`` it into another app)."""
    console = Console(settings, engine, clock or SystemClock())
    app = FastAPI(title="broadcaster audit console", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(console_router(console))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code in (301, 302, 303, 307):
            return Response(status_code=exc.status_code, headers=exc.headers)
        titles = {403: "Not allowed", 404: "Not found", 400: "Bad request"}
        return console.page(
            request,
            "error.html",
            status=exc.status_code,
            title=titles.get(exc.status_code, "Error"),
            detail=str(exc.detail),
        )

    @app.middleware("http")
    async def _security_headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    app.state.console = console
    return app
