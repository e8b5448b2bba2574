"""A run's report: what was sent with which template and variables, counts by state, error codes,
segments and estimated cost, and charts of sends and deliveries over time.

:func:`run_report` gathers the data (also shown by the console's run page);
:func:`render_report_html` makes one self-contained HTML file of it (inline CSS and SVG, no script,
nothing fetched), fit to archive next to the campaign's papers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from broadcaster.audit.charts import PALETTE, Series, bars_svg, timeline_svg
from broadcaster.audit.completeness import check_run
from broadcaster.models import DELIVERED, MESSAGE_STATES, Action, Message, Run
from broadcaster.runs import counts_by_status
from broadcaster.templating import TemplateError, TemplateStore

messages_t = Message.__table__
runs_t = Run.__table__
actions_t = Action.__table__


class ReportError(LookupError):
    pass


def run_report(
    conn: Connection,
    run_id: int,
    *,
    zone: ZoneInfo,
    cost_per_segment: float,
    currency: str,
    store: TemplateStore | None = None,
) -> dict[str, Any]:
    run = conn.execute(sa.select(runs_t).where(runs_t.c.id == run_id)).mappings().one_or_none()
    if run is None:
        raise ReportError(f"run {run_id} not found")
    run = dict(run)
    raw_counts = counts_by_status(conn, run_id)
    counts = {s: raw_counts.get(s, 0) for s in MESSAGE_STATES if raw_counts.get(s)}
    counts.update({s: n for s, n in raw_counts.items() if s not in counts})
    errors = [
        {"code": code, "text": text, "status": status, "count": n}
        for code, text, status, n in conn.execute(
            sa.select(messages_t.c.error_code, messages_t.c.error_text, messages_t.c.status, sa.func.count())
            .where(
                messages_t.c.run_id == run_id,
                sa.or_(messages_t.c.error_code.is_not(None), messages_t.c.error_text.is_not(None)),
            )
            .group_by(messages_t.c.error_code, messages_t.c.error_text, messages_t.c.status)
            .order_by(sa.func.count().desc())
            .limit(50)
        ).all()
    ]
    segments_of = sa.func.coalesce(sa.func.sum(messages_t.c.segments), 0)
    planned_segments = conn.execute(
        sa.select(segments_of).where(
            messages_t.c.run_id == run_id,
            messages_t.c.status.not_in(["suppressed", "cancelled"]),
            messages_t.c.body != "",
        )
    ).scalar_one()
    billed_segments, accepted = conn.execute(
        sa.select(segments_of, sa.func.count()).where(
            messages_t.c.run_id == run_id, messages_t.c.provider_id.is_not(None)
        )
    ).one()
    encodings = dict(
        conn.execute(
            sa.select(messages_t.c.encoding, sa.func.count())
            .where(messages_t.c.run_id == run_id)
            .group_by(messages_t.c.encoding)
        ).all()
    )
    sent_times = list(
        conn.execute(
            sa.select(messages_t.c.sent_at).where(
                messages_t.c.run_id == run_id, messages_t.c.sent_at.is_not(None)
            )
        ).scalars()
    )
    delivered_times = list(
        conn.execute(
            sa.select(messages_t.c.final_at).where(
                messages_t.c.run_id == run_id,
                messages_t.c.status == DELIVERED,
                messages_t.c.final_at.is_not(None),
            )
        ).scalars()
    )
    failed_times = list(
        conn.execute(
            sa.select(messages_t.c.final_at).where(
                messages_t.c.run_id == run_id,
                messages_t.c.status.in_(["failed", "undelivered"]),
                messages_t.c.final_at.is_not(None),
            )
        ).scalars()
    )
    series = [
        Series("sent", sent_times, PALETTE["sent"]),
        Series("delivered", delivered_times, PALETTE["delivered"]),
        Series("failed/undelivered", failed_times, PALETTE["failed"]),
    ]
    actions = [
        dict(a)
        for a in conn.execute(
            sa.select(
                actions_t.c.id,
                actions_t.c.at,
                actions_t.c.actor,
                actions_t.c.host,
                actions_t.c.action,
                actions_t.c.details,
            )
            .where(actions_t.c.run_id == run_id)
            .order_by(actions_t.c.id)
        ).mappings()
    ]
    check = check_run(conn, run_id)
    planned_segments, billed_segments = int(planned_segments), int(billed_segments)
    return {
        "run": run,
        "template": _template_info(run, store),
        "counts": counts,
        "total": sum(counts.values()),
        "errors": errors,
        "segments": {
            "planned": planned_segments,
            "billed": billed_segments,
            "accepted_messages": accepted,
            "encodings": encodings,
        },
        "cost": {
            "currency": currency,
            "per_segment": cost_per_segment,
            "billed": round(billed_segments * cost_per_segment, 4),
            "planned": round(planned_segments * cost_per_segment, 4),
        },
        "check": {
            "ok": check.ok,
            "issues_total": check.issues_total,
            "pending_total": check.pending_total,
            "issues": check.issues[:20],
        },
        "actions": actions,
        "charts": {
            "states": bars_svg("Messages by state", list(counts.items())),
            "timeline": timeline_svg("Sends and outcomes over time", series, zone),
            "cumulative": timeline_svg("Running totals", series, zone, cumulative=True),
        },
        "zone": zone.key,
    }


def _template_info(run: dict[str, Any], store: TemplateStore | None) -> dict[str, Any]:
    """The template as it was: the run's own snapshot; for runs older than snapshots, the file's
    current text only if its hash still matches the run's."""
    info: dict[str, Any] = {
        "name": run["template"],
        "sha256": run["template_sha256"],
        "source": run.get("template_source"),
        "note": None,
    }
    if info["source"] is not None or store is None:
        return info
    try:
        current = store.load(run["template"])
    except TemplateError:
        info["note"] = "the template file is no longer there"
        return info
    if current.sha256 == run["template_sha256"]:
        info["source"] = current.source
    else:
        info["note"] = f"the template file has changed since this run (now sha256 {current.sha256[:12]}…)"
    return info


def render_report_html(report: dict[str, Any], *, generated_at: datetime, generated_by: str) -> str:
    from broadcaster.web.render import environment, inline_css

    env = environment(ZoneInfo(report["zone"]))
    return env.get_template("report.html").render(
        report=report, generated_at=generated_at, generated_by=generated_by, css=inline_css()
    )
