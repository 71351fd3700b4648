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
dlq_app = typer.Typer(
    help="Dead-lettered records: list them with their reasons, show one, replay a fix.\n\n"
    "$ invoice-batch dlq list --reason unknown_currency\n\n"
    "$ invoice-batch dlq replay --reason unknown_currency",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")
app.add_typer(dlq_app, name="dlq")
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


def checked_store(current: Settings) -> Any:
    """The store on DATABASE_URL, or exit 2 naming DATABASE_URL."""
    from invoice_batch.preflight import open_checked_engine
    from invoice_batch.store.repository import Store

    return Store(open_checked_engine(current))


def api_errors_as_usage(exc: Exception, current: Settings) -> Exception:
    """API errors a person can fix (key, address, batch id) become one-line usage errors."""
    import anthropic

    if isinstance(exc, anthropic.AuthenticationError):
        return UsageError("ANTHROPIC_API_KEY: the API rejected the key (401)")
    if isinstance(exc, anthropic.APIConnectionError):
        where = current.anthropic_base_url or "https://api.anthropic.com"
        return UsageError(f"ANTHROPIC_BASE_URL: cannot reach the API at {where}")
    if isinstance(exc, anthropic.NotFoundError):
        return UsageError("BATCH_ID: the API has no such batch (404)")
    return exc


@app.command()
def consume() -> None:
    """Run the consumer until SIGTERM/SIGINT: Kafka → buffer → batches.

    $ KAFKA_BOOTSTRAP_SERVERS=kafka:9092 BATCH_CUTOFF=23:00 invoice-batch consume
    """
    from invoice_batch.bootstrap import run_service

    raise typer.Exit(run_service(settings(), "consumer"))


@app.command()
def collect() -> None:
    """Run the collector until SIGTERM/SIGINT: ended batches → classified invoices; also
    applies RESULTS_RETENTION_DAYS and sends the summary e-mail at SUMMARY_AT.

    $ invoice-batch collect
    """
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
    """Run the embedded Kafka-compatible broker (Tansu, in-memory) until interrupted.

    $ invoice-batch broker --port 9092
    """
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
    article's five invoices and prints the results table.

    $ invoice-batch demo
    """
    from invoice_batch.demo import run_demo

    raise typer.Exit(run_demo(processing_seconds=processing_seconds))


@app.command()
def produce(
    file: Annotated[Path, typer.Argument(help="JSON lines (.jsonl/.json) or CSV with a header.")],
    topic: Annotated[str | None, typer.Option(help="Default: INPUT_TOPIC.")] = None,
) -> None:
    """Send invoices from a file to the input topic. Bad lines are reported with their
    line number and skipped; the rest are sent; exit code 1 when any line was bad.

    $ invoice-batch produce examples/invoices.csv

    $ KAFKA_BOOTSTRAP_SERVERS=kafka:9092 invoice-batch produce today.jsonl
    """
    from invoice_batch.preflight import check_broker
    from invoice_batch.produce import produce_file

    current = settings()
    if not file.is_file():
        raise UsageError(f"{file}: no such file")
    check_broker(current)
    raise typer.Exit(produce_file(current, file, topic))


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    limit: Annotated[int, typer.Option(help="Recent batches to show.", min=1)] = 10,
    watch: Annotated[
        float | None,
        typer.Option(help="Redraw every N seconds until Ctrl-C.", min=0.2, show_default=False),
    ] = None,
) -> None:
    """Open and recent batches with a progress bar each (done / remaining, age, time to
    the API's 24 h expiry), the pending buffer, and when the next flush happens and why.

    $ invoice-batch status

    $ invoice-batch status --watch 5

    $ invoice-batch status --json | jq '.batches[0]'
    """
    current = settings()
    store = checked_store(current)
    from invoice_batch.status import show_status

    show_status(current, store, as_json=as_json, limit=limit, watch=watch)


@app.command()
def flush(
    now: Annotated[bool, typer.Option("--now", help="Submit everything pending now.")] = False,
) -> None:
    """Submit pending invoices as batches: what the flush policy says is due, or with
    --now everything pending (e.g. before a planned outage, or to skip waiting for the
    cut-off).

    $ invoice-batch flush

    $ invoice-batch flush --now
    """
    from invoice_batch.preflight import require_api_key

    current = settings()
    require_api_key(current)
    store = checked_store(current)

    import anthropic
    from prometheus_client import CollectorRegistry

    from invoice_batch.bootstrap import anthropic_client
    from invoice_batch.consumer.flusher import Flusher
    from invoice_batch.logs import configure_logging
    from invoice_batch.metrics import Metrics

    # The flusher's log lines go to stderr; stdout carries only the result line.
    configure_logging(current.log_level, current.log_format)
    client = anthropic_client(current)
    flusher = Flusher(store, client, current, Metrics(CollectorRegistry()))
    try:
        created = flusher.flush_all("manual") if now else flusher.flush_due()
    except anthropic.APIError as exc:
        raise api_errors_as_usage(exc, current) from None
    typer.echo(
        f"submitted {len(created)} batch(es)" + (": " + ", ".join(created) if created else "")
    )


@app.command()
def cancel(batch_id: Annotated[str, typer.Argument(help="The API batch id (msgbatch_…).")]) -> None:
    """Ask the API to cancel a batch; its unprocessed requests come back as canceled and
    the collector retries them in a later batch (up to MAX_ATTEMPTS).

    $ invoice-batch cancel msgbatch_01JE1rdHow1puFkuwUBB9vum
    """
    from invoice_batch.preflight import require_api_key

    current = settings()
    require_api_key(current)

    import anthropic

    from invoice_batch.bootstrap import anthropic_client

    try:
        batch = anthropic_client(current).messages.batches.cancel(batch_id)
    except anthropic.APIError as exc:
        raise api_errors_as_usage(exc, current) from None
    typer.echo(f"{batch.id}: {batch.processing_status}")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the store schema to the newest version (the services also do
    it when they start).

    $ DATABASE_URL=postgresql+psycopg://ap@db/invoices invoice-batch db upgrade
    """
    from invoice_batch.preflight import open_checked_engine
    from invoice_batch.settings import redact_url

    current = settings()
    open_checked_engine(current).dispose()
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
    """Print the effective settings (environment, then config file, then defaults),
    secrets masked.

    $ invoice-batch --config invoice-batch.toml config show
    """
    for name, value in masked(settings()).items():
        typer.echo(f"{name}={value}")


@app.command()
def report(
    since: Annotated[
        str, typer.Option(help="A duration (24h, 90m, 7d) or a date (2026-11-27, local).")
    ] = "24h",
    output: Annotated[
        str, typer.Option("--format", help="table, csv (one line per invoice) or json.")
    ] = "table",
    send: Annotated[
        bool,
        typer.Option("--send", help="E-mail today's summary now (once a day, as the collector)."),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="With --send: send even if today's went out.")
    ] = False,
) -> None:
    """The morning summary: invoices classified per department (count and amount per
    currency), the approval queue with reasons, DLQ and retry counts, batches with
    latency, tokens and cost, and the saving against real-time prices.

    $ invoice-batch report

    $ invoice-batch report --since 2026-11-27 --format csv > invoices.csv

    $ invoice-batch report --format json | jq '.approval_queue'

    $ invoice-batch report --send
    """
    from datetime import UTC, datetime

    from rich.console import Console

    from invoice_batch.report import (
        BadWindow,
        build_report,
        parse_since,
        render_csv,
        render_json,
        render_rich,
    )
    from invoice_batch.store.reporting import OperationsStore

    if output not in ("table", "csv", "json"):
        raise UsageError(f"--format: expected table, csv or json, got {output!r}")
    current = settings()
    if send and not current.smtp_configured():
        raise UsageError("SMTP_HOST, SUMMARY_FROM and SUMMARY_TO: all needed to send the summary")
    ops = OperationsStore(checked_store(current).engine)
    now = datetime.now(UTC)
    if send:
        from invoice_batch.collector.service import default_owner
        from invoice_batch.summary_mail import send_daily_summary

        outcomes = send_daily_summary(current, ops, now, f"cli-{default_owner()}", force=force)
        for outcome in outcomes:
            detail = {
                "sent": "sent",
                "already_sent": "already sent today (--force sends another copy)",
                "failed": f"FAILED: {outcome.error}",
                "taken": "already claimed today: being sent, or its outcome is unknown (--force)",
                "wait": "failed earlier; the collector retries it (--force sends now)",
            }.get(outcome.result, outcome.result)
            typer.echo(f"{outcome.audience} ({', '.join(outcome.recipients)}): {detail}")
        if not outcomes:
            typer.echo("no recipients configured")
        if any(o.result == "failed" for o in outcomes):
            raise typer.Exit(1)
        return
    try:
        start = parse_since(since, now, current.zone)
    except BadWindow as exc:
        raise UsageError(str(exc)) from None
    built = build_report(
        ops.report_rows(start, now),
        since=start,
        until=now,
        zone=current.zone,
        usd_rates=current.usd_rates,
    )
    if output == "json":
        typer.echo(render_json(built))
    elif output == "csv":
        typer.echo(render_csv(built), nl=False)
    else:
        Console().print(render_rich(built))


def _dlq_records(current: Settings) -> Any:
    from invoice_batch.dlq_tools import read_dlq
    from invoice_batch.preflight import check_broker

    check_broker(current)
    return read_dlq(current)


@dlq_app.command("list")
def dlq_list(
    reason: Annotated[str | None, typer.Option(help="Only records with this error.code.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Every record of DLQ_TOPIC with its offset, reason and source, and whether it was
    already replayed; then the count per reason.

    $ invoice-batch dlq list

    $ invoice-batch dlq list --reason max_attempts --json
    """
    import json
    from collections import Counter

    from rich.console import Console
    from rich.table import Table

    from invoice_batch.dlq_tools import ledger_source, select_records
    from invoice_batch.store.reporting import OperationsStore

    current = settings()
    records = select_records(_dlq_records(current), reason=reason)
    ops = OperationsStore(checked_store(current).engine)
    replayed = {
        (topic, p, o)
        for topic in {ledger_source(r, current.dlq_topic)[0] for r in records}
        for p, o in ops.replayed_sources(topic)
    }
    rows = [
        {
            "partition": r.partition,
            "offset": r.offset,
            "timestamp": r.timestamp.isoformat() if r.timestamp else None,
            "key": r.label(),
            "error_code": r.code,
            "error_message": r.message,
            "source": "{}/{}/{}".format(*r.source) if r.source else None,
            "replayed": ledger_source(r, current.dlq_topic) in replayed,
        }
        for r in records
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{current.dlq_topic}: {len(rows)} records", title_justify="left")
    for column in ("offset", "time (UTC)", "key", "reason", "message", "source", "replayed"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            f"{row['partition']}:{row['offset']}",
            str(row["timestamp"] or "-")[:19],
            str(row["key"]),
            str(row["error_code"]),
            str(row["error_message"])[:80],
            str(row["source"] or "-"),
            "yes" if row["replayed"] else "",
        )
    console = Console()
    console.print(table)
    counts = Counter(str(row["error_code"]) for row in rows)
    console.print(", ".join(f"{code}: {n}" for code, n in counts.most_common()) or "empty")


@dlq_app.command("show")
def dlq_show(
    offset: Annotated[int, typer.Argument(help="The record's offset in DLQ_TOPIC.")],
    partition: Annotated[int, typer.Option(help="The DLQ partition.")] = 0,
) -> None:
    """One DLQ record: its headers and its value decoded as an invoice where possible.

    $ invoice-batch dlq show 42
    """
    import json

    from invoice_batch.dlq_tools import describe_value

    current = settings()
    found = [r for r in _dlq_records(current) if r.offset == offset and r.partition == partition]
    if not found:
        raise UsageError(f"OFFSET: {current.dlq_topic} has no record {partition}:{offset}")
    record = found[0]
    typer.echo(
        json.dumps(
            {
                "topic": current.dlq_topic,
                "partition": record.partition,
                "offset": record.offset,
                "timestamp": record.timestamp.isoformat() if record.timestamp else None,
                "key": record.key.decode("utf-8", "replace") if record.key else None,
                "headers": record.headers,
                "value": describe_value(record, current),
            },
            indent=2,
            default=str,
        )
    )


@dlq_app.command("replay")
def dlq_replay(
    first: Annotated[int | None, typer.Option("--from", help="First DLQ offset (incl.).")] = None,
    last: Annotated[int | None, typer.Option("--to", help="Last DLQ offset (incl.).")] = None,
    reason: Annotated[str | None, typer.Option(help="Only records with this error.code.")] = None,
    partition: Annotated[int | None, typer.Option(help="Only this DLQ partition.")] = None,
    everything: Annotated[bool, typer.Option("--all", help="Every record.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would go.")] = False,
) -> None:
    """Send selected DLQ records back to INPUT_TOPIC after a fix (original key and bytes).
    A record replayed before is skipped (the store remembers each source offset);
    a replayed invoice that was already classified is dropped by the consumer as a
    duplicate, so nothing is classified or billed twice.

    $ invoice-batch dlq replay --reason unknown_currency --dry-run

    $ invoice-batch dlq replay --from 120 --to 180
    """
    from invoice_batch.dlq_tools import replay, select_records
    from invoice_batch.store.reporting import OperationsStore

    if not (everything or reason or first is not None or last is not None):
        raise UsageError("choose records with --from/--to, --reason, or --all")
    current = settings()
    ops = OperationsStore(checked_store(current).engine)
    selected = select_records(
        _dlq_records(current), first=first, last=last, reason=reason, partition=partition
    )
    result = replay(current, ops, selected, dry_run=dry_run)
    verb = "would replay" if dry_run else "replayed"
    typer.echo(
        f"{verb} {len(result.replayed)} records to {current.input_topic}; skipped "
        f"{len(result.already_replayed)} already replayed and {len(result.empty)} empty"
        + (
            f"; {result.forgotten_rows} dead-lettered store rows cleared for reprocessing"
            if result.forgotten_rows
            else ""
        )
    )


def _one_line(exc: BaseException) -> str:
    from invoice_batch.logs import scrub

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return scrub(text)[:500]


def main(argv: list[str] | None = None) -> None:
    try:
        # Without standalone mode, click returns a command's typer.Exit code instead of
        # raising it: pass it on, or every `raise typer.Exit(1)` would exit 0.
        returned = app(args=argv, standalone_mode=False)
        if isinstance(returned, int) and not isinstance(returned, bool) and returned:
            sys.exit(returned)
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
