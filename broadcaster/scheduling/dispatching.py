"""The dispatcher the daemon (inline mode), ``daemon --once`` and ``schedule simulate`` use:
configured from settings exactly like ``broadcaster worker``."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from broadcaster import dispatch
from broadcaster.clock import Clock
from broadcaster.providers.base import Provider
from broadcaster.settings import Settings


def make_dispatcher(
    engine: Engine, provider: Provider, clock: Clock, settings: Settings, *, worker_id: str
) -> dispatch.Dispatcher:
    return dispatch.dispatcher_from_settings(engine, provider, clock, settings, worker_id=worker_id)
