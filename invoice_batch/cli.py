"""The ``invoice-batch`` console script.

Exit codes: 0 success, 2 bad usage or configuration (one line naming what to fix),
1 any other failure (one line; the traceback only with ``--debug``).
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer

from invoice_batch.settings import ConfigError, Settings, load_settings, masked

app = typer.Typer(
    name="invoice-batch",
    help="Invoice events on Kafka → Claude Message Batches → classified-invoice events.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="The store schema.", no_args_is_help=True)
config_app = typer.Typer(help="The effective settings.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")
topics_app = typer.Typer(help="The Kafka topics.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")

_state: dict[str, Any] = {"debug": False, "config": None}


class UsageError(Exception):
    """Exit 2 with this one line."""


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="A TOML file setting the same keys as the environment."),
    ] = None,
) -> None:
    _state["debug"] = debug
    _state["config"] = config


def settings() -> Settings:
    return load_settings(config_file=_state["config"])


@app.command()
def consume() -> None:
    """Run the consumer until SIGTERM/SIGINT: Kafka → buffer → batches."""
    from invoice_batch.bootstrap import run_service

    raise typer.Exit(run_service(settings(), "consumer"))


@app.command()
def collect() -> None:
    """Run the collector until SIGTERM/SIGINT: ended batches → classified invoices."""
    from invoice_batch.bootstrap import run_service

    raise typer.Exit(run_service(settings(), "collector"))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def emulator(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
) -> None:
    """Run the local Message Batches API emulator (more options: --help of the emulator).

    Example: invoice-batch emulator --port 8080, then ANTHROPIC_BASE_URL=http://127.0.0.1:8080
    """
    from invoice_batch_emulator.__main__ import main as emulator_main

    raise typer.Exit(emulator_main(["--port", str(port), "--host", host, *ctx.args]))


@app.command()
def broker(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9092,
    log_file: Annotated[Path, typer.Option(help="Where the broker's output goes.")] = Path(
        "var/broker.log"
    ),
) -> None:
    """Run the embedded Kafka-compatible broker (Tansu, in-memory) until interrupted."""
    import signal
    import threading

    from invoice_batch.broker import start_broker, stop_process

    process = start_broker(port, log_file)
    typer.echo(f"broker listening on 127.0.0.1:{port} (log: {log_file})")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        if process.poll() is not None:
            raise RuntimeError(f"the broker exited with code {process.returncode}; see {log_file}")
    stop_process(process)


@app.command()
def demo(
    processing_seconds: Annotated[
        float, typer.Option(help="How long the emulator takes per batch.")
    ] = 4.0,
) -> None:
    """Everything embedded: broker, emulator, SQLite, consumer and collector; sends the
    article's five invoices and prints the results table."""
    from invoice_batch.demo import run_demo

    raise typer.Exit(run_demo(processing_seconds=processing_seconds))


@app.command()
def produce(
    file: Annotated[Path, typer.Argument(help="JSON lines (.jsonl/.json) or CSV with a header.")],
    topic: Annotated[str | None, typer.Option(help="Default: INPUT_TOPIC.")] = None,
) -> None:
    """Send invoices from a file to the input topic. Bad lines are reported and skipped.

    Example: invoice-batch produce examples/seed_invoices.jsonl
    """
    from invoice_batch.produce import produce_file

    raise typer.Exit(produce_file(settings(), file, topic))


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    limit: Annotated[int, typer.Option(help="Recent batches to show.")] = 10,
) -> None:
    """Open and recent batches with progress, and the pending buffer."""
    from invoice_batch.status import show_status

    show_status(settings(), as_json=as_json, limit=limit)


@app.command()
def flush(
    now: Annotated[bool, typer.Option("--now", help="Submit everything pending now.")] = False,
) -> None:
    """Submit pending invoices as batches (--now: whatever the flush policy says)."""
    from prometheus_client import CollectorRegistry

    from invoice_batch.bootstrap import anthropic_client, open_store
    from invoice_batch.consumer.flusher import Flusher
    from invoice_batch.metrics import Metrics

    current = settings()
    flusher = Flusher(
        open_store(current), anthropic_client(current), current, Metrics(CollectorRegistry())
    )
    created = flusher.flush_all("manual") if now else flusher.flush_due()
    typer.echo(
        f"submitted {len(created)} batch(es)" + (": " + ", ".join(created) if created else "")
    )


@app.command()
def cancel(batch_id: Annotated[str, typer.Argument(help="The API batch id (msgbatch_…).")]) -> None:
    """Ask the API to cancel a batch; its unprocessed requests come back as canceled and
    are retried by the collector."""
    from invoice_batch.bootstrap import anthropic_client

    batch = anthropic_client(settings()).messages.batches.cancel(batch_id)
    typer.echo(f"{batch.id}: {batch.processing_status}")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the store schema to the newest version."""
    from invoice_batch.settings import redact_url
    from invoice_batch.store.schema import make_engine, upgrade_schema

    current = settings()
    engine = make_engine(current.sqlalchemy_url())
    upgrade_schema(engine)
    typer.echo(f"store schema is up to date: {redact_url(current.sqlalchemy_url())}")


@topics_app.command("create")
def topics_create(
    partitions: Annotated[
        int | None, typer.Option(min=1, help="Default: TOPIC_PARTITIONS (6).")
    ] = None,
    replication_factor: Annotated[
        int | None,
        typer.Option(min=-1, help="Default: TOPIC_REPLICATION_FACTOR (-1: the broker's)."),
    ] = None,
    retention_hours: Annotated[
        float | None,
        typer.Option(min=0.001, help="Default: TOPIC_RETENTION_HOURS or the broker's."),
    ] = None,
) -> None:
    """Create the input, output and DLQ topics that do not exist yet (existing ones are
    left as they are). For clusters where the services may not create topics."""
    from invoice_batch.kafka import ensure_topics

    current = settings()
    names = [current.input_topic, current.output_topic, current.dlq_topic]
    created = ensure_topics(
        current,
        names,
        partitions=partitions,
        replication=replication_factor,
        retention_hours=retention_hours,
    )
    for name in names:
        typer.echo(f"{name}: {'created' if name in created else 'exists'}")


@config_app.command("show")
def config_show() -> None:
    """Print the effective settings, secrets masked."""
    for name, value in masked(settings()).items():
        typer.echo(f"{name}={value}")


def _one_line(exc: BaseException) -> str:
    from invoice_batch.logs import scrub

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return scrub(text)[:500]


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, standalone_mode=False)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except (ConfigError, UsageError) as exc:
        print(f"invoice-batch: {_one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except (typer.BadParameter, typer.Abort) as exc:
        print(f"invoice-batch: {_one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(2)
        if _state["debug"]:
            traceback.print_exc()
        print(f"invoice-batch: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)
