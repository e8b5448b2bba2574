"""``broadcaster daemon``: the unattended process around :class:`ScheduleRunner`.

- Leadership: takes the leader lock, or waits as a standby (heartbeat role ``standby``) and takes
  over when the lock frees. Start, takeover and stop are recorded in the trail.
- Waking: APScheduler 3.11's BackgroundScheduler fires each job at its occurrences, in its zone,
  which wakes the main loop; the loop also wakes on its own at the planner's next fire time. Either
  way the loop runs one planning pass against the ledger, so a late, lost, doubled or spurious
  wake-up can neither drop nor double a run. APScheduler's in-memory job store is never trusted.
- Reload: SIGHUP, or a change under ``schedules/`` or ``templates/`` (polled), reloads the
  campaign files; a broken file keeps its last good version.
- Dispatch (``BROADCASTER_DAEMON_DISPATCH``): ``inline`` runs an embedded dispatcher thread;
  ``workers`` leaves sending to ``broadcaster worker`` processes.
- Sealing: while active, a thread chains new message events into the audit trail's hash chain
  every ``BROADCASTER_AUDIT_SEAL_INTERVAL_SECONDS`` (by the daemon's clock), and once more on stop,
  so events are protected without an operator.
- SIGTERM/SIGINT: stop planning, stop the dispatcher between batches (it finishes or releases what
  it holds), seal what it recorded, mark the heartbeat stopped, release the lock.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from sqlalchemy.engine import Engine

from broadcaster import db
from broadcaster.audit.chain import seal_events
from broadcaster.claims import default_worker_id
from broadcaster.clock import Clock, SystemClock
from broadcaster.scheduling import leader
from broadcaster.scheduling.catalog import Catalog, Job, fingerprint, load_catalog
from broadcaster.scheduling.logs import emit, get_logger
from broadcaster.scheduling.occurrences import next_occurrence
from broadcaster.scheduling.runner import SCHEDULER_ACTOR, ScheduleRunner, TickReport
from broadcaster.settings import Settings
from broadcaster.templating import TemplateStore
from broadcaster.trail import record_action

EXIT_LOST_LOCK = 3


class LockHeldError(RuntimeError):
    """Another daemon holds the leader lock."""


_TICK = timedelta(microseconds=1)


class OccurrenceTrigger(BaseTrigger):
    """An APScheduler trigger that fires at exactly the job's occurrences: the job's own
    CronTrigger/DateTrigger/IntervalTrigger, inside its window, without the repeated fall-back hour."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        after = previous_fire_time if previous_fire_time is not None else now - _TICK
        return next_occurrence(self.job, after)

    def __str__(self) -> str:
        return str(self.job.trigger)


class Daemon:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        clock: Clock | None = None,
        dispatch: str | None = None,
        logger: logging.Logger | None = None,
        use_apscheduler: bool = True,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.clock = clock or SystemClock()
        self.dispatch = dispatch or settings.daemon_dispatch
        self.log = logger or get_logger()
        self.id = default_worker_id()  # host:pid:token, so a dead daemon's leases are recovered at once
        self.started_at = self.clock.now()
        self.role = leader.STANDBY
        self.store = TemplateStore(settings.templates_dir)
        self.runner = ScheduleRunner(
            engine,
            self.clock,
            self.store,
            daemon_id=self.id,
            retry=timedelta(seconds=settings.daemon_retry_seconds),
            logger=self.log,
        )
        self.lock = leader.make_lock(engine, settings.var_dir)
        self.catalog = Catalog()
        self.use_apscheduler = use_apscheduler
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._dispatch_stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._dispatcher: threading.Thread | None = None
        self._sealer: threading.Thread | None = None
        self._scheduler: BackgroundScheduler | None = None
        self._fingerprint = ""

    # --- requests from signal handlers and other threads ---

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def request_reload(self) -> None:
        self._reload.set()
        self._wake.set()

    # --- pieces ---

    def _info(self) -> dict[str, Any]:
        return {
            "dispatch": self.dispatch,
            "jobs": len(self.catalog.jobs),
            "lock": self.lock.description,
            "schedules_dir": str(self.settings.schedules_dir),
        }

    def _beat(self, role: str | None = None) -> None:
        self.role = role or self.role
        leader.beat(
            self.engine,
            daemon_id=self.id,
            role=self.role,
            now=self.clock.now(),
            started_at=self.started_at,
            info=self._info(),
        )

    def _trail(self, action: str, **details: Any) -> None:
        with db.writing(self.engine) as conn:
            record_action(
                conn,
                at=self.clock.now(),
                actor=SCHEDULER_ACTOR,
                action=action,
                details={"daemon": self.id, "pid": os.getpid(), "dispatch": self.dispatch, **details},
            )

    def load(self) -> Catalog:
        """(Re)load the campaign files; broken files are logged and keep their last good version."""
        self._fingerprint = fingerprint(self.settings.schedules_dir, self.settings.templates_dir)
        catalog = load_catalog(
            self.settings.schedules_dir,
            self.store,
            default_grace=timedelta(seconds=self.settings.schedule_default_grace_seconds),
            previous=self.catalog,
        )
        for issue in catalog.issues:
            emit(self.log, "schedule.invalid", logging.ERROR, **issue.as_dict())
        for entry in catalog.campaigns.values():
            if entry.stale:
                emit(
                    self.log,
                    "schedule.kept_previous",
                    logging.WARNING,
                    file=entry.file,
                    campaign=entry.campaign_id,
                )
        self.catalog = catalog
        self.runner.set_catalog(catalog)
        emit(
            self.log,
            "schedule.loaded",
            campaigns=len(catalog.campaigns),
            jobs=len(catalog.jobs),
            enabled=len(catalog.active_jobs()),
            errors=len(catalog.issues),
        )
        if self._scheduler is not None:
            self._sync_apscheduler()
        return catalog

    def _fired(self, job_key: str) -> None:
        emit(self.log, "apscheduler.fire", job=job_key)
        self._wake.set()

    def _sync_apscheduler(self) -> None:
        assert self._scheduler is not None
        self._scheduler.remove_all_jobs()
        now = self.clock.now()
        for job in self.catalog.active_jobs():
            upcoming = next_occurrence(job, now)
            if upcoming is None:
                continue
            self._scheduler.add_job(
                self._fired,
                trigger=OccurrenceTrigger(job),
                args=[job.key],
                id=job.key,
                name=job.name,
                next_run_time=upcoming,
                misfire_grace_time=max(1, int(job.grace.total_seconds())),
                coalesce=False,
                max_instances=1000,
                replace_existing=True,
            )

    def _start_apscheduler(self) -> None:
        if not self.use_apscheduler:
            emit(self.log, "apscheduler.off", reason="rehearsal clock: the daemon's own timer wakes it")
            return
        self._scheduler = BackgroundScheduler(timezone=UTC, job_defaults={"coalesce": False})
        self._scheduler.start()
        self._sync_apscheduler()

    def _watch(self) -> None:
        """Poll schedules/ and templates/ for changes (no extra dependency, works on any file system)."""
        interval = self.settings.daemon_reload_poll_seconds
        while not self._stop.wait(interval):
            try:
                current = fingerprint(self.settings.schedules_dir, self.settings.templates_dir)
            except OSError:
                continue
            if current != self._fingerprint:
                emit(self.log, "schedule.changed", note="files changed under schedules/ or templates/")
                self.request_reload()

    def _dispatch_loop(self) -> None:
        from broadcaster.providers import make_provider
        from broadcaster.scheduling.dispatching import make_dispatcher

        provider = make_provider(self.settings, self.clock)
        dispatcher = make_dispatcher(self.engine, provider, self.clock, self.settings, worker_id=self.id)
        # As `broadcaster worker` does: what is loaded by now lives as long as the daemon, so keep it
        # out of the collector's full passes (~100 ms stalls of every thread: a hiccup in sending).
        gc.freeze()
        while not self._dispatch_stop.is_set():
            try:
                stats = dispatcher.run_forever(self._dispatch_stop, poll=1.0)
                emit(self.log, "dispatch.stopped", **stats.as_dict())
            except Exception as exc:  # keep dispatching after a database hiccup
                emit(self.log, "dispatch.error", logging.ERROR, error=f"{type(exc).__name__}: {exc}")
                self._dispatch_stop.wait(self.settings.daemon_retry_seconds)

    def seal(self) -> int:
        """Chain the message events written since the last seal; an error is logged, never raised."""
        try:
            sealed = seal_events(self.engine, batch=self.settings.audit_seal_batch)
        except Exception as exc:  # the database went away: the next pass seals what this one did not
            emit(self.log, "audit.seal_error", logging.ERROR, error=f"{type(exc).__name__}: {exc}")
            return 0
        emit(self.log, "audit.sealed", logging.INFO if sealed else logging.DEBUG, events=sealed)
        return sealed

    def _seal_loop(self) -> None:
        """Seal at once, then every ``audit_seal_interval_seconds`` of the daemon's clock."""
        every = timedelta(seconds=self.settings.audit_seal_interval_seconds)
        poll = min(every.total_seconds(), self.settings.daemon_heartbeat_seconds)
        next_seal = self.clock.now()
        while not self._stop.is_set():
            if self.clock.now() >= next_seal:
                self.seal()
                next_seal = self.clock.now() + every
            left = (next_seal - self.clock.now()).total_seconds()
            self._stop.wait(min(poll, max(left, 0.01)))

    def _spawn(self, target: Any, name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    # --- the process ---

    def wait_for_leadership(self) -> bool:
        """Take the lock, or wait as a standby until it frees; False if asked to stop first."""
        if self.lock.try_acquire():
            return True
        emit(self.log, "daemon.standby", daemon=self.id, lock=self.lock.description)
        self._beat(leader.STANDBY)
        next_beat = self.clock.now() + timedelta(seconds=self.settings.daemon_heartbeat_seconds)
        while not self._stop.is_set():
            self._wake.wait(self.settings.daemon_standby_poll_seconds)
            self._wake.clear()
            if self._reload.is_set():
                self._reload.clear()
                self.load()
            if self._stop.is_set():
                break
            if self.lock.try_acquire():
                with db.reading(self.engine) as conn:
                    previous = [
                        h["daemon_id"]
                        for h in leader.heartbeats(conn)
                        if h["role"] == leader.ACTIVE and h["daemon_id"] != self.id
                    ]
                emit(self.log, "daemon.takeover", daemon=self.id, previous=previous[:1])
                self._trail("daemon.takeover", previous=previous[:1])
                return True
            if self.clock.now() >= next_beat:
                self._beat(leader.STANDBY)
                next_beat = self.clock.now() + timedelta(seconds=self.settings.daemon_heartbeat_seconds)
        return False

    def run_once(self) -> tuple[TickReport, int]:
        """``daemon --once``: one planning pass (catch-up included), the runs it made sent (inline
        dispatch), their events sealed. Recorded in the trail as a start and a stop (``once``).
        Returns the pass's report and the events sealed; raises LockHeldError if a daemon is active."""
        if not self.lock.try_acquire():
            raise LockHeldError(f"another daemon is active ({self.lock.description})")
        try:
            self._trail("daemon.started", host=socket.gethostname(), once=True)
            self.load()
            report = self.runner.tick()
            if self.dispatch == "inline" and report.runs:
                from broadcaster.providers import make_provider
                from broadcaster.scheduling.dispatching import make_dispatcher

                provider = make_provider(self.settings, self.clock)
                dispatcher = make_dispatcher(
                    self.engine, provider, self.clock, self.settings, worker_id=self.id
                )
                for outcome in report.runs:
                    if outcome.run_id is not None:
                        dispatcher.run_until_idle(outcome.run_id)
            sealed = self.seal()  # what this pass recorded is protected before it exits
            self._trail(
                "daemon.stopped",
                once=True,
                runs=[o.run_id for o in report.runs],
                missed=[o.run_id for o in report.missed],
                errors=len(report.errors),
                sealed=sealed,
            )
        finally:
            self.lock.release()
        return report, sealed

    def run(self) -> int:
        settings = self.settings
        emit(
            self.log,
            "daemon.started",
            daemon=self.id,
            dispatch=self.dispatch,
            schedules_dir=settings.schedules_dir,
            templates_dir=settings.templates_dir,
            database=self.engine.url.render_as_string(hide_password=True),
        )
        leader.prune(self.engine, self.clock.now())
        self._trail("daemon.started", host=socket.gethostname())
        self.load()
        self._spawn(self._watch, "schedule-watcher")
        code = 0
        try:
            if not self.wait_for_leadership():
                return 0
            self._beat(leader.ACTIVE)
            emit(self.log, "daemon.active", daemon=self.id, lock=self.lock.description)
            self._start_apscheduler()
            if self.dispatch == "inline":
                self._dispatcher = self._spawn(self._dispatch_loop, "dispatcher")
            self._sealer = self._spawn(self._seal_loop, "audit-sealer")
            code = self._main_loop()
        finally:
            self._shutdown()
        return code

    def _main_loop(self) -> int:
        heartbeat = timedelta(seconds=self.settings.daemon_heartbeat_seconds)
        retry = timedelta(seconds=self.settings.daemon_retry_seconds)
        # With APScheduler on, it fires each job on time; the loop's own timer is the safety net,
        # a second later. Without it (rehearsal clock), the timer fires on time.
        slack = timedelta(seconds=1) if self._scheduler is not None else timedelta(0)
        next_tick = self.clock.now()
        next_beat = self.clock.now() + heartbeat
        self._wake.set()  # plan at once on start: the catch-up after downtime
        while not self._stop.is_set():
            woken = self._wake.is_set()
            self._wake.clear()
            if self._reload.is_set():
                self._reload.clear()
                emit(self.log, "daemon.reload", daemon=self.id)
                self.load()
                woken = True
            now = self.clock.now()
            if now >= next_beat:
                if not self.lock.held():
                    emit(
                        self.log,
                        "daemon.lost_lock",
                        logging.ERROR,
                        daemon=self.id,
                        lock=self.lock.description,
                    )
                    return EXIT_LOST_LOCK
                try:
                    self._beat()
                except Exception as exc:
                    emit(
                        self.log,
                        "daemon.heartbeat_error",
                        logging.ERROR,
                        error=f"{type(exc).__name__}: {exc}",
                    )
                next_beat = now + heartbeat
            if woken or now >= next_tick + slack:
                try:
                    report = self.runner.tick()
                    next_tick = report.next_wake or now + timedelta(days=1)
                except Exception as exc:  # the database went away: say so, try again later
                    emit(self.log, "daemon.tick_error", logging.ERROR, error=f"{type(exc).__name__}: {exc}")
                    next_tick = now + retry
                if next_tick > now:
                    emit(self.log, "schedule.next", logging.DEBUG, at=next_tick)
            now = self.clock.now()
            timeout = min(next_tick + slack, next_beat) - now
            self._wake.wait(max(0.0, min(timeout.total_seconds(), heartbeat.total_seconds())))
        return 0

    def _shutdown(self) -> None:
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        if self._dispatcher is not None:
            self._dispatch_stop.set()
            self._dispatcher.join(self.settings.daemon_stop_timeout_seconds)
            if self._dispatcher.is_alive():
                emit(
                    self.log,
                    "dispatch.still_busy",
                    logging.WARNING,
                    note="exiting anyway: claimed messages keep their lease and are reconciled, "
                    "never resent blindly",
                )
        if self._sealer is not None:  # one last seal, after the dispatcher's last outcomes
            self._sealer.join(self.settings.daemon_stop_timeout_seconds)
            self.seal()
        role_before = self.role
        try:
            self._beat(leader.STOPPED)
            self._trail("daemon.stopped", role_before=role_before)
        except Exception as exc:
            emit(self.log, "daemon.stop_error", logging.ERROR, error=f"{type(exc).__name__}: {exc}")
        self.lock.release()
        emit(self.log, "daemon.stopped", daemon=self.id)
