"""Tables. SQLModel classes for reading and small writes; bulk paths use ``Model.__table__`` with Core.

Every timestamp is stored in UTC and comes back aware (``UTCDateTime``), on SQLite as on PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes only: stored as UTC, returned with ``tzinfo=UTC``."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} refused: times must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _ts(nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_column=sa.Column(UTCDateTime(), nullable=nullable, index=index))


def _json() -> Any:
    return Field(default_factory=dict, sa_column=sa.Column(sa.JSON(), nullable=False))


# Message states. Terminal ones never change again except by a provider callback moving forward.
QUEUED = "queued"
SENDING = "sending"
UNKNOWN = "unknown"  # the request may have reached the provider; reconcile before any resend
SENT = "sent"
DELIVERED = "delivered"
UNDELIVERED = "undelivered"
FAILED = "failed"
SUPPRESSED = "suppressed"
CANCELLED = "cancelled"
MESSAGE_STATES = (QUEUED, SENDING, UNKNOWN, SENT, DELIVERED, UNDELIVERED, FAILED, SUPPRESSED, CANCELLED)
FINAL_STATES = frozenset({DELIVERED, UNDELIVERED, FAILED, SUPPRESSED, CANCELLED})
PENDING_STATES = frozenset({QUEUED, SENDING, UNKNOWN})

# Run states.
RUN_PENDING = "pending"
RUN_READY = "ready"
RUN_SENDING = "sending"
RUN_PAUSED = "paused"
RUN_COMPLETED = "completed"
RUN_CANCELLED = "cancelled"
RUN_MISSED = "missed"
RUN_STATES = (RUN_PENDING, RUN_READY, RUN_SENDING, RUN_PAUSED, RUN_COMPLETED, RUN_CANCELLED, RUN_MISSED)


class Recipient(SQLModel, table=True):
    __tablename__ = "recipients"
    id: int | None = Field(default=None, primary_key=True)
    phone: str = Field(sa_column=sa.Column(sa.String(20), nullable=False, unique=True))
    name: str | None = Field(default=None, sa_column=sa.Column(sa.String(200)))
    attributes: dict[str, Any] = _json()
    region: str | None = Field(default=None, sa_column=sa.Column(sa.String(4)))
    created_at: datetime | None = _ts(nullable=False)
    updated_at: datetime | None = _ts(nullable=False)


class RecipientList(SQLModel, table=True):
    __tablename__ = "lists"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=sa.Column(sa.String(200), nullable=False, unique=True))
    description: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    created_at: datetime | None = _ts(nullable=False)


class ListMember(SQLModel, table=True):
    __tablename__ = "list_members"
    list_id: int = Field(sa_column=sa.Column(sa.ForeignKey("lists.id"), primary_key=True))
    recipient_id: int = Field(
        sa_column=sa.Column(sa.ForeignKey("recipients.id"), primary_key=True, index=True)
    )
    batch_id: int | None = Field(default=None, sa_column=sa.Column(sa.ForeignKey("import_batches.id")))
    added_at: datetime | None = _ts(nullable=False)


class OptOut(SQLModel, table=True):
    """Keyed by phone, not recipient: a STOP reply can come from a number we never imported."""

    __tablename__ = "optouts"
    id: int | None = Field(default=None, primary_key=True)
    phone: str = Field(sa_column=sa.Column(sa.String(20), nullable=False, unique=True))
    source: str = Field(sa_column=sa.Column(sa.String(40), nullable=False))  # operator|reply|provider|import
    reason: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    actor: str | None = Field(default=None, sa_column=sa.Column(sa.String(200)))
    created_at: datetime | None = _ts(nullable=False)


class ImportBatch(SQLModel, table=True):
    __tablename__ = "import_batches"
    id: int | None = Field(default=None, primary_key=True)
    list_id: int | None = Field(default=None, sa_column=sa.Column(sa.ForeignKey("lists.id")))
    kind: str = Field(default="recipients", sa_column=sa.Column(sa.String(20), nullable=False))
    file_name: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    sha256: str = Field(sa_column=sa.Column(sa.String(64), nullable=False, index=True))
    encoding: str | None = Field(default=None, sa_column=sa.Column(sa.String(40)))
    rows: int = 0
    imported: int = 0
    updated: int = 0
    duplicates: int = 0
    rejected: int = 0
    added_to_list: int = 0
    actor: str | None = Field(default=None, sa_column=sa.Column(sa.String(200)))
    host: str | None = Field(default=None, sa_column=sa.Column(sa.String(200)))
    started_at: datetime | None = _ts(nullable=False)
    finished_at: datetime | None = _ts()


class ImportReject(SQLModel, table=True):
    """A row refused at import, kept so that audit staff can later see who was not imported and why."""

    __tablename__ = "import_rejects"
    id: int | None = Field(default=None, primary_key=True)
    batch_id: int = Field(sa_column=sa.Column(sa.ForeignKey("import_batches.id"), nullable=False, index=True))
    row_number: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))  # spreadsheet row, header = 1
    raw_value: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    reason: str = Field(sa_column=sa.Column(sa.String(40), nullable=False))  # a code of phones.REASONS
    detail: str | None = Field(default=None, sa_column=sa.Column(sa.Text))  # the sentence shown to operators


class Run(SQLModel, table=True):
    """The run ledger: one row per occurrence that should send (scheduled fire or operator send)."""

    __tablename__ = "runs"
    __table_args__ = (sa.UniqueConstraint("job_id", "scheduled_for", name="uq_runs_job_occurrence"),)
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(default="manual", sa_column=sa.Column(sa.String(20), nullable=False))
    campaign_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(200), index=True))
    job_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(200)))
    scheduled_for: datetime | None = _ts()
    template: str = Field(sa_column=sa.Column(sa.String(300), nullable=False))
    template_sha256: str | None = Field(default=None, sa_column=sa.Column(sa.String(64)))
    # The template's text when the run was created: messages are rendered from it even if the file
    # changes before they are written (a resumed run), and audit staff can read it (NULL before 0007).
    template_source: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    variables: dict[str, Any] = _json()
    list_names: list[str] = Field(default_factory=list, sa_column=sa.Column(sa.JSON(), nullable=False))
    sender: str | None = Field(default=None, sa_column=sa.Column(sa.String(100)))
    timezone: str = Field(default="Asia/Shanghai", sa_column=sa.Column(sa.String(64), nullable=False))
    priority: int = Field(default=0, sa_column=sa.Column(sa.Integer, nullable=False, default=0))
    quiet_hours: str | None = Field(default=None, sa_column=sa.Column(sa.String(20)))  # "21:00-08:00"
    status: str = Field(default=RUN_PENDING, sa_column=sa.Column(sa.String(20), nullable=False, index=True))
    intended: int = 0
    created_by: str | None = Field(default=None, sa_column=sa.Column(sa.String(200)))
    created_at: datetime | None = _ts(nullable=False)
    started_at: datetime | None = _ts()
    finished_at: datetime | None = _ts()
    note: str | None = Field(default=None, sa_column=sa.Column(sa.Text))


class Message(SQLModel, table=True):
    """The outbox and the send log at once, so the two can never disagree."""

    __tablename__ = "messages"
    __table_args__ = (
        sa.UniqueConstraint("run_id", "recipient_id", name="uq_messages_run_recipient"),
        # Claims read "queued, due, most urgent first, oldest due first" straight off this index.
        sa.Index("ix_messages_due", "status", sa.desc("priority"), "next_attempt_at", "id"),
        sa.Index("ix_messages_run_status", "run_id", "status"),
    )
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(sa_column=sa.Column(sa.ForeignKey("runs.id"), nullable=False))
    recipient_id: int = Field(sa_column=sa.Column(sa.ForeignKey("recipients.id"), nullable=False))
    phone: str = Field(sa_column=sa.Column(sa.String(20), nullable=False, index=True))
    body: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    encoding: str = Field(sa_column=sa.Column(sa.String(8), nullable=False))
    segments: int = 1
    characters: int = 0
    status: str = Field(default=QUEUED, sa_column=sa.Column(sa.String(20), nullable=False))
    priority: int = Field(default=0, sa_column=sa.Column(sa.Integer, nullable=False, default=0))
    sender: str | None = Field(default=None, sa_column=sa.Column(sa.String(100)))
    attempts: int = 0
    next_attempt_at: datetime | None = _ts()
    lease_owner: str | None = Field(default=None, sa_column=sa.Column(sa.String(200)))
    lease_expires_at: datetime | None = _ts()
    attempt_started_at: datetime | None = _ts()
    provider_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(64), index=True))
    error_code: str | None = Field(default=None, sa_column=sa.Column(sa.String(20)))
    error_text: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    created_at: datetime | None = _ts(nullable=False)
    updated_at: datetime | None = _ts(nullable=False)
    sent_at: datetime | None = _ts()
    final_at: datetime | None = _ts()


class MessageEvent(SQLModel, table=True):
    """Append-only history of each message's changes of state.

    ``chain_seq``/``prev_hash``/``hash`` are NULL until the audit sealer chains the event
    (broadcaster.audit.chain.seal_events); sealed events are chained in id order.
    """

    __tablename__ = "message_events"
    __table_args__ = (
        sa.Index("ux_message_events_chain_seq", "chain_seq", unique=True),
        sa.Index(
            "ix_message_events_unsealed",
            "id",
            sqlite_where=sa.text("chain_seq IS NULL"),
            postgresql_where=sa.text("chain_seq IS NULL"),
        ),
    )
    id: int | None = Field(default=None, primary_key=True)
    message_id: int = Field(sa_column=sa.Column(sa.ForeignKey("messages.id"), nullable=False, index=True))
    run_id: int = Field(sa_column=sa.Column(sa.Integer, nullable=False, index=True))
    at: datetime | None = _ts(nullable=False)
    from_status: str | None = Field(default=None, sa_column=sa.Column(sa.String(20)))
    to_status: str = Field(sa_column=sa.Column(sa.String(20), nullable=False))
    source: str = Field(default="system", sa_column=sa.Column(sa.String(40), nullable=False))
    detail: dict[str, Any] = _json()
    chain_seq: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger))
    prev_hash: str | None = Field(default=None, sa_column=sa.Column(sa.String(64)))
    hash: str | None = Field(default=None, sa_column=sa.Column(sa.String(64)))


class Action(SQLModel, table=True):
    """The action trail: who did what, from where. Append-only; chained by hashes at insert time
    (broadcaster.trail.record_action), in ``chain_seq`` order."""

    __tablename__ = "actions"
    __table_args__ = (sa.Index("ux_actions_chain_seq", "chain_seq", unique=True),)
    id: int | None = Field(default=None, primary_key=True)
    at: datetime | None = _ts(nullable=False, index=True)
    actor: str = Field(sa_column=sa.Column(sa.String(200), nullable=False))
    host: str | None = Field(default=None, sa_column=sa.Column(sa.String(200)))
    action: str = Field(sa_column=sa.Column(sa.String(60), nullable=False, index=True))
    run_id: int | None = Field(default=None, sa_column=sa.Column(sa.Integer, index=True))
    details: dict[str, Any] = _json()
    chain_seq: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger))
    prev_hash: str | None = Field(default=None, sa_column=sa.Column(sa.String(64)))
    hash: str | None = Field(default=None, sa_column=sa.Column(sa.String(64)))


# Console roles: auditors read with masked numbers; supervisors may also unmask and export.
ROLE_AUDITOR = "auditor"
ROLE_SUPERVISOR = "supervisor"
ROLES = (ROLE_AUDITOR, ROLE_SUPERVISOR)


class ConsoleUser(SQLModel, table=True):
    """An account of the audit console; the password is stored as a salted scrypt hash only."""

    __tablename__ = "console_users"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=sa.Column(sa.String(100), nullable=False, unique=True))
    role: str = Field(sa_column=sa.Column(sa.String(20), nullable=False))
    password_hash: str = Field(sa_column=sa.Column(sa.String(300), nullable=False))
    created_by: str | None = Field(default=None, sa_column=sa.Column(sa.String(200)))
    created_at: datetime | None = _ts(nullable=False)
    last_login_at: datetime | None = _ts()


class ConsoleSession(SQLModel, table=True):
    """A login. Only the sha256 of the cookie token is stored, so a database reader cannot log in."""

    __tablename__ = "console_sessions"
    id: int | None = Field(default=None, primary_key=True)
    token_sha256: str = Field(sa_column=sa.Column(sa.String(64), nullable=False, unique=True))
    user_id: int = Field(
        sa_column=sa.Column(sa.ForeignKey("console_users.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    csrf_token: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    client: str | None = Field(default=None, sa_column=sa.Column(sa.String(200)))
    created_at: datetime | None = _ts(nullable=False)
    last_seen_at: datetime | None = _ts(nullable=False)
    expires_at: datetime | None = _ts(nullable=False, index=True)


def tables() -> dict[str, sa.Table]:
    return dict(SQLModel.metadata.tables)


class InboundMessage(SQLModel, table=True):
    """An SMS a recipient sent us (a reply), kept so audit staff can see what was asked and done."""

    __tablename__ = "inbound_messages"
    id: int | None = Field(default=None, primary_key=True)
    sid: str = Field(sa_column=sa.Column(sa.String(64), nullable=False, unique=True))
    from_number: str = Field(sa_column=sa.Column(sa.String(64), nullable=False, index=True))
    to_number: str | None = Field(default=None, sa_column=sa.Column(sa.String(64)))
    body: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    received_at: datetime | None = _ts(nullable=False, index=True)
    action: str = Field(sa_column=sa.Column(sa.String(20), nullable=False))  # opt-out|opt-in|help|none
    changed: bool = Field(default=False, sa_column=sa.Column(sa.Boolean, nullable=False, default=False))


# --- scheduler daemon (issue 4) ---


class ScheduleState(SQLModel, table=True):
    """Per scheduled job: every occurrence at or before ``watermark`` has been dealt with (it has a
    run, or a ``missed`` run). The daemon plans from here after any downtime; no job store needed."""

    __tablename__ = "schedule_state"
    job_key: str = Field(sa_column=sa.Column(sa.String(200), primary_key=True))
    watermark: datetime | None = _ts(nullable=False)
    updated_at: datetime | None = _ts(nullable=False)
    updated_by: str | None = Field(default=None, sa_column=sa.Column(sa.String(200)))


class SendingWorker(SQLModel, table=True):
    """One row per dispatcher sending now (worker, daemon, in-process send): the rate is theirs to share."""

    __tablename__ = "sending_workers"
    worker_id: str = Field(sa_column=sa.Column(sa.String(200), primary_key=True))
    joined_at: datetime | None = _ts(nullable=False)
    seen_at: datetime | None = _ts(nullable=False, index=True)
    share: float = Field(default=0.0, sa_column=sa.Column(sa.Float, nullable=False, default=0.0))


class DaemonHeartbeat(SQLModel, table=True):
    """One row per daemon process: who it is, whether it is active or standby, when it last beat."""

    __tablename__ = "daemon_heartbeats"
    daemon_id: str = Field(sa_column=sa.Column(sa.String(200), primary_key=True))
    host: str = Field(sa_column=sa.Column(sa.String(200), nullable=False))
    pid: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    role: str = Field(sa_column=sa.Column(sa.String(20), nullable=False))  # active | standby | stopped
    started_at: datetime | None = _ts(nullable=False)
    beat_at: datetime | None = _ts(nullable=False, index=True)
    stopped_at: datetime | None = _ts()
    info: dict[str, Any] = _json()
