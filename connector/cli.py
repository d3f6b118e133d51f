"""Command line: ``connector run`` (the worker) and ``connector demo``."""

import asyncio
import logging
import signal
import sys
from typing import Annotated, Literal

import structlog
import typer

from connector.commercetools.auth import AuthenticationFailed
from connector.config import load_settings
from connector.errors import ConfigurationError
from connector.logs import configure_logging

EXIT_BAD_SETTINGS = 2

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command()
def run() -> None:
    """Run the worker until SIGTERM or SIGINT."""
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        typer.echo(f"connector: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_SETTINGS) from None
    configure_logging(settings.worker.log_format, settings.worker.log_level)
    from connector.app import run_worker  # after logging is set up

    try:
        asyncio.run(_until_signalled(lambda stop: run_worker(settings, stop)))
    except ConfigurationError as exc:
        typer.echo(f"connector: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_SETTINGS) from None
    except AuthenticationFailed as exc:
        structlog.get_logger("connector").error("worker.cannot_authenticate", error=str(exc))
        raise typer.Exit(1) from None


@app.command()
def demo(source: Annotated[Literal["kafka", "pubsub"], typer.Option(help="the queue to run on")] = "kafka") -> None:
    """Show the connector at work on this machine: a local queue, the commercetools emulator, the sandbox PSP."""
    configure_logging("console" if sys.stderr.isatty() else "json", "warning")
    # A fresh broker answers the first group join with a retried coordinator error: noise in a demo.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    from connector.demo import main as demo_main

    raise typer.Exit(demo_main(source))


async def _until_signalled(main) -> None:  # type: ignore[no-untyped-def]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await main(stop)


def main() -> None:
    app()
