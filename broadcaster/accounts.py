"""Accounts and sessions of the audit console.

Passwords: salted scrypt (stdlib ``hashlib.scrypt``), compared in constant time; a login for an
unknown name costs the same scrypt, so timing does not reveal which names exist. Sessions: a random
token in an HttpOnly cookie; the database keeps only its sha256, with an absolute expiry, an idle
timeout and a per-session CSRF token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from broadcaster.models import ROLES, ConsoleSession, ConsoleUser
from broadcaster.trail import record_action

users_t = ConsoleUser.__table__
sessions_t = ConsoleSession.__table__

SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_LEN = 2**14, 8, 1, 32
MIN_PASSWORD = 10
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")
TOUCH_EVERY = timedelta(seconds=60)  # how often a session's last-seen time is written


class AccountError(ValueError):
    """A refused account change; the message says why."""


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=SCRYPT_LEN
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode("utf-8"),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


_DUMMY_HASH = hash_password("not a real password", salt=b"\0" * 16)


def validate_new_user(name: str, role: str, password: str) -> None:
    if not NAME_RE.match(name):
        raise AccountError(f"user name {name!r}: letters, digits and . _ @ - only (up to 100)")
    if role not in ROLES:
        raise AccountError(f"role {role!r}: known roles: {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"password too short: at least {MIN_PASSWORD} characters")


def add_user(conn: Connection, name: str, role: str, password: str, *, at: datetime, actor: str) -> int:
    validate_new_user(name, role, password)
    if conn.execute(sa.select(users_t.c.id).where(users_t.c.name == name)).first():
        raise AccountError(f"user {name!r} already exists")
    user_id = conn.execute(
        sa.insert(users_t)
        .values(name=name, role=role, password_hash=hash_password(password), created_by=actor, created_at=at)
        .returning(users_t.c.id)
    ).scalar_one()
    record_action(conn, at=at, actor=actor, action="user.added", details={"name": name, "role": role})
    return int(user_id)


def remove_user(conn: Connection, name: str, *, at: datetime, actor: str) -> None:
    user_id = conn.execute(sa.select(users_t.c.id).where(users_t.c.name == name)).scalar_one_or_none()
    if user_id is None:
        raise AccountError(f"user {name!r} not found")
    ended = conn.execute(sa.delete(sessions_t).where(sessions_t.c.user_id == user_id)).rowcount
    conn.execute(sa.delete(users_t).where(users_t.c.id == user_id))
    record_action(
        conn, at=at, actor=actor, action="user.removed", details={"name": name, "sessions_ended": ended}
    )


def list_users(conn: Connection, *, now: datetime) -> list[dict[str, Any]]:
    active = (
        sa.select(sa.func.count())
        .where(sessions_t.c.user_id == users_t.c.id, sessions_t.c.expires_at > now)
        .scalar_subquery()
    )
    rows = conn.execute(
        sa.select(
            users_t.c.name,
            users_t.c.role,
            users_t.c.created_at,
            users_t.c.created_by,
            users_t.c.last_login_at,
            active.label("active_sessions"),
        ).order_by(users_t.c.name)
    ).mappings()
    return [dict(r) for r in rows]


def authenticate(conn: Connection, name: str, password: str) -> dict[str, Any] | None:
    row = conn.execute(
        sa.select(users_t.c.id, users_t.c.name, users_t.c.role, users_t.c.password_hash).where(
            users_t.c.name == name
        )
    ).first()
    if row is None:
        check_password(password, _DUMMY_HASH)  # same cost as a real check
        return None
    if not check_password(password, row.password_hash):
        return None
    return {"id": row.id, "name": row.name, "role": row.role}


@dataclass(frozen=True)
class Session:
    id: int
    user_id: int
    user: str
    role: str
    csrf_token: str
    expires_at: datetime
    last_seen_at: datetime

    def needs_touch(self, now: datetime) -> bool:
        return self.last_seen_at <= now - TOUCH_EVERY


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_session(
    conn: Connection, user_id: int, *, now: datetime, lifetime: timedelta, client: str | None
) -> tuple[str, str]:
    """Returns (cookie token, CSRF token). Expired sessions are purged on the way."""
    conn.execute(sa.delete(sessions_t).where(sessions_t.c.expires_at <= now))
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    conn.execute(
        sa.insert(sessions_t).values(
            token_sha256=_token_hash(token),
            user_id=user_id,
            csrf_token=csrf,
            client=client,
            created_at=now,
            last_seen_at=now,
            expires_at=now + lifetime,
        )
    )
    conn.execute(sa.update(users_t).where(users_t.c.id == user_id).values(last_login_at=now))
    return token, csrf


def find_session(conn: Connection, token: str | None, *, now: datetime, idle: timedelta) -> Session | None:
    """The live session of a cookie token, or None (unknown, expired, or idle too long)."""
    if not token:
        return None
    row = conn.execute(
        sa.select(
            sessions_t.c.id,
            sessions_t.c.user_id,
            sessions_t.c.csrf_token,
            sessions_t.c.expires_at,
            sessions_t.c.last_seen_at,
            users_t.c.name,
            users_t.c.role,
        )
        .join(users_t, users_t.c.id == sessions_t.c.user_id)
        .where(sessions_t.c.token_sha256 == _token_hash(token))
    ).first()
    if row is None or row.expires_at <= now or row.last_seen_at + idle <= now:
        return None
    return Session(row.id, row.user_id, row.name, row.role, row.csrf_token, row.expires_at, row.last_seen_at)


def touch_session(conn: Connection, session_id: int, *, now: datetime) -> None:
    conn.execute(
        sa.update(sessions_t)
        .where(sessions_t.c.id == session_id, sessions_t.c.last_seen_at <= now - TOUCH_EVERY)
        .values(last_seen_at=now)
    )


def end_session(conn: Connection, session_id: int) -> None:
    conn.execute(sa.delete(sessions_t).where(sessions_t.c.id == session_id))
