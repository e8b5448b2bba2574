"""Commands: ``webhooks serve`` (Twilio status callbacks and replies) and ``fake-twilio`` (a local
Twilio-compatible server for tests, benchmarks and demos)."""

from __future__ import annotations

import gc

import typer

from broadcaster.cli.common import EXIT_USAGE, CliError, app_context, print_json

webhooks_app = typer.Typer(
    help="Twilio webhooks: delivery status callbacks and inbound replies (STOP/START/HELP)."
)


@webhooks_app.command("serve")
def serve_webhooks(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8080, "--port", help="Port (0: any free port, printed on start)."),
    with_console: bool = typer.Option(
        False, "--with-console", help="Also serve the audit console under /console (same process)."
    ),
) -> None:
    """Serve POST /twilio/status, POST /twilio/inbound and GET /healthz until interrupted.

    Signatures are checked with TWILIO_AUTH_TOKEN against BROADCASTER_WEBHOOK_BASE_URL + path (the
    public URL Twilio calls, when behind a proxy), else against the URL as received."""
    from broadcaster.serving import serve
    from broadcaster.webhooks import WebhookConfigError, create_app

    actx = app_context(ctx)
    try:
        app = create_app(actx.settings, actx.engine, actx.clock)
    except WebhookConfigError as exc:
        raise CliError(str(exc)) from None
    if with_console:
        from broadcaster.web.console import create_console_app

        app.mount("/console", create_console_app(actx.settings, actx.engine, actx.clock))
    serve(app, host, port, on_ready=lambda url: print_json({"base_url": url}))


def _parse_fail_numbers(values: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values or []:
        phone, sep, outcome = value.partition("=")
        status = outcome.partition(":")[0]
        if not sep or not phone or status not in ("undelivered", "failed"):
            raise CliError(
                f"--fail-number {value!r}: expected PHONE=undelivered[:CODE] or PHONE=failed[:CODE]",
                EXIT_USAGE,
            )
        out[phone.strip()] = outcome.strip()
    return out


def fake_twilio(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8081, "--port", help="Port (0: any free port)."),
    latency_ms: float = typer.Option(0.0, "--latency-ms", help="Delay before answering each API request."),
    callback_url: str = typer.Option(
        None, "--callback-url", help="StatusCallback for messages created without one."
    ),
    callback_delay_ms: float = typer.Option(50.0, "--callback-delay-ms", help="Delay of each status step."),
    fail_number: list[str] = typer.Option(
        None, "--fail-number", help="PHONE=undelivered[:CODE] or PHONE=failed[:CODE] (repeatable)."
    ),
    duplicate_callbacks: bool = typer.Option(
        False, "--duplicate-callbacks", help="Post every callback twice."
    ),
    out_of_order_callbacks: bool = typer.Option(
        False, "--out-of-order-callbacks", help="Post the final status before 'sent'."
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="Leave messages queued (benchmarks)."),
    seed: int = typer.Option(None, "--seed", help="Seed for fault probabilities."),
) -> None:
    """Run a Twilio-compatible fake Messages API (credentials: TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN,
    else fixed fake ones). Prints one JSON line {base_url, account_sid, from_number} once listening;
    control API under /_fake/ (see docs/twilio.md)."""
    from broadcaster.serving import serve
    from broadcaster.twilio_fake import (
        DEFAULT_ACCOUNT_SID,
        DEFAULT_AUTH_TOKEN,
        MAGIC_FROM_OK,
        FakeConfig,
        FakeTwilio,
    )

    settings = app_context(ctx).settings
    token = (
        settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else DEFAULT_AUTH_TOKEN
    )
    config = FakeConfig(
        account_sid=settings.twilio_account_sid or DEFAULT_ACCOUNT_SID,
        auth_token=token,
        latency_ms=latency_ms,
        callback_url=callback_url,
        callback_delay_ms=callback_delay_ms,
        fail_numbers=_parse_fail_numbers(fail_number),
        duplicate_callbacks=duplicate_callbacks,
        out_of_order_callbacks=out_of_order_callbacks,
        progress=not no_progress,
        seed=seed,
    )
    fake = FakeTwilio(config)
    # Everything imported so far lives as long as the process: keep it out of the garbage
    # collector's full passes, which otherwise stall the server for tens of ms now and then (a
    # benchmark measuring arrival times would count that stall as the client's burst).
    gc.freeze()

    def ready(url: str) -> None:
        print_json({"base_url": url, "account_sid": config.account_sid, "from_number": MAGIC_FROM_OK})

    serve(fake.app(), host, port, on_ready=ready, log_level="warning", access_log=False)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(webhooks_app, name="webhooks")
    app.command("fake-twilio")(fake_twilio)
