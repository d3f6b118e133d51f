"""Command line: ``connector run`` (the worker), ``receive`` (notifications and the Payments API), ``reconcile``, ``replay``,
``setup`` and ``healthcheck``."""

import asyncio
import contextlib
import json
import signal
import urllib.request
from collections.abc import Iterator
from typing import Annotated

import structlog
import typer

from connector.commercetools.auth import AuthenticationFailed
from connector.config import (
    SetupSettings,
    load_receiver_settings,
    load_settings,
    load_setup_settings,
)
from connector.errors import ConfigurationError
from connector.logs import configure_logging

EXIT_BAD_SETTINGS = 2

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command()
def run() -> None:
    """Run the worker until SIGTERM or SIGINT."""
    with _bad_settings_exit():
        settings = load_settings()
        configure_logging(settings.worker.log_format, settings.worker.log_level)
        from connector.app import run_worker  # after logging is set up

        try:
            asyncio.run(_until_signalled(lambda stop: run_worker(settings, stop)))
        except AuthenticationFailed as exc:
            structlog.get_logger("connector").error("worker.cannot_authenticate", error=str(exc))
            raise typer.Exit(1) from None


@app.command()
def receive() -> None:
    """Run the public listener until SIGTERM or SIGINT: PSP webhooks queued for the workers, and the Payments API when enabled."""
    with _bad_settings_exit():
        config = load_receiver_settings()
        configure_logging(config.worker.log_format, config.worker.log_level)
        from connector.app import run_receiver

        asyncio.run(_until_signalled(lambda stop: run_receiver(config, stop)))


@app.command()
def reconcile() -> None:
    """Sweep once, now: run the protocol on payments no delivery came for, and ask the PSP about old Pending ones."""
    with _bad_settings_exit():
        settings = load_settings()
        configure_logging(settings.worker.log_format, settings.worker.log_level)
        from connector.app import reconcile_once

        try:
            report = asyncio.run(reconcile_once(settings))
        except AuthenticationFailed as exc:
            typer.echo(f"connector: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(json.dumps(report.as_json()))


@app.command()
def replay(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list and count what would move; move nothing")] = False,
    reason: Annotated[str | None, typer.Option(help="only dead letters whose reason contains this (any case)")] = None,
    older_than_s: Annotated[float | None, typer.Option(help="only those dead-lettered at least this long ago")] = None,
    newer_than_s: Annotated[float | None, typer.Option(help="only those dead-lettered at most this long ago")] = None,
    payment_id: Annotated[list[str] | None, typer.Option(help="only deliveries of this payment (repeatable)")] = None,
) -> None:
    """Move dead-lettered deliveries back to the main topic or subscription, to be processed again."""
    with _bad_settings_exit():
        settings = load_settings()
        configure_logging(settings.worker.log_format, settings.worker.log_level)
        from connector.app import replay_dead_letters
        from connector.replay import ReplayFilter

        chosen = ReplayFilter(reason, older_than_s, newer_than_s, frozenset(payment_id or ()))
        report = asyncio.run(replay_dead_letters(settings, chosen, dry_run=dry_run))
        if report.older_than_key_retention:
            typer.echo(
                f"connector: warning: {report.older_than_key_retention} of these deliveries are older than their PSP keeps"
                " idempotency keys, on a route whose adapter cannot look a transaction up: a transaction claimed before"
                " may be executed again. Check those payments at the PSP first (docs/operations.md, 'Replaying').",
                err=True,
            )
        typer.echo(json.dumps(report.as_json()))


@app.command()
def setup(dry_run: Annotated[bool, typer.Option("--dry-run", help="print the drafts and send nothing")] = False) -> None:
    """Create, or bring up to date, the interaction Type, the Subscription (SUBSCRIPTION_* variables) and,
    with NOTIFY_PUBLIC_URL set, each route's PSP webhook endpoint."""
    with _bad_settings_exit():
        settings = load_setup_settings()
        from connector.provision import printable, resources, webhook_drafts

        if dry_run:
            drafts = [printable(resource) for resource in resources(settings.subscription)]
            typer.echo(json.dumps(drafts + webhook_drafts(settings.public_url, settings.adapters), indent=2))
            return
        try:
            for line in asyncio.run(_set_up(settings)):
                typer.echo(line)
        except AuthenticationFailed as exc:
            typer.echo(f"connector: {exc}", err=True)
            raise typer.Exit(1) from None


async def _set_up(settings: SetupSettings) -> list[str]:
    from connector.app import build_commercetools
    from connector.provision import apply, register_webhooks, resources

    ct = build_commercetools(settings.commercetools)
    try:
        lines = [(await apply(ct, resource)).describe() for resource in resources(settings.subscription)]
    finally:
        await ct.aclose()
    return lines + await register_webhooks(settings.public_url, settings.adapters)


@app.command()
def healthcheck(
    port: Annotated[int, typer.Option(envvar="CONNECTOR_HTTP_PORT", help="the worker's operations port")] = 8080,
) -> None:
    """Exit 0 when the worker on this host answers /healthz (for a container HEALTHCHECK)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as response:
            healthy = response.status == 200
    except OSError:
        healthy = False
    raise typer.Exit(0 if healthy else 1)


@contextlib.contextmanager
def _bad_settings_exit() -> Iterator[None]:
    """Settings that cannot work end the command with exit code 2 and a message naming them."""
    try:
        yield
    except ConfigurationError as exc:
        typer.echo(f"connector: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_SETTINGS) from None


async def _until_signalled(main) -> None:  # type: ignore[no-untyped-def]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await main(stop)


def main() -> None:
    app()
