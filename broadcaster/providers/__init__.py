"""Provider adapters and the factory that picks one from settings."""

from __future__ import annotations

from broadcaster.clock import Clock
from broadcaster.providers.base import Accepted, Found, Outbound, Provider, ProviderError
from broadcaster.settings import Settings

__all__ = ["Accepted", "Found", "Outbound", "Provider", "ProviderError", "make_provider"]


class ProviderConfigError(Exception):
    pass


def make_provider(settings: Settings, clock: Clock | None = None) -> Provider:
    if settings.provider == "log":
        from broadcaster.providers.log import LogProvider

        return LogProvider(settings.log_provider_path, clock, settings.log_provider_delay_ms / 1000)
    if settings.provider == "twilio":
        from broadcaster.providers.twilio import TwilioProvider

        return TwilioProvider.from_settings(settings, clock)
    raise ProviderConfigError(
        f"unknown provider {settings.provider!r} (BROADCASTER_PROVIDER): known: log, twilio"
    )
