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
        sa.Index("ix_messages_claim", "status", "priority", "next_attempt_at"),
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
    """Append-only history of each message's changes of state."""

    __tablename__ = "message_events"
    id: int | None = Field(default=None, primary_key=True)
    message_id: int = Field(sa_column=sa.Column(sa.ForeignKey("messages.id"), nullable=False, index=True))
    run_id: int = Field(sa_column=sa.Column(sa.Integer, nullable=False, index=True))
    at: datetime | None = _ts(nullable=False)
    from_status: str | None = Field(default=None, sa_column=sa.Column(sa.String(20)))
    to_status: str = Field(sa_column=sa.Column(sa.String(20), nullable=False))
    source: str = Field(default="system", sa_column=sa.Column(sa.String(40), nullable=False))
    detail: dict[str, Any] = _json()


class Action(SQLModel, table=True):
    """The action trail: who did what, from where. Append-only; hash-chained by the audit module."""

    __tablename__ = "actions"
    id: int | None = Field(default=None, primary_key=True)
    at: datetime | None = _ts(nullable=False, index=True)
    actor: str = Field(sa_column=sa.Column(sa.String(200), nullable=False))
    host: str | None = Field(default=None, sa_column=sa.Column(sa.String(200)))
    action: str = Field(sa_column=sa.Column(sa.String(60), nullable=False, index=True))
    run_id: int | None = Field(default=None, sa_column=sa.Column(sa.Integer, index=True))
    details: dict[str, Any] = _json()
    prev_hash: str | None = Field(default=None, sa_column=sa.Column(sa.String(64)))
    hash: str | None = Field(default=None, sa_column=sa.Column(sa.String(64)))


def tables() -> dict[str, sa.Table]:
    return dict(SQLModel.metadata.tables)
