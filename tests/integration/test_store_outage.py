"""The store goes away mid-stream: the consumer pauses, keeps its group membership,
and resumes when the store is back; nothing is lost or classified twice."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from invoice_batch.demo import running_pipeline
from tests.integration.test_pipeline import decode_all, encoded, invoices
from tests.support.tcp_proxy import tcp_proxy
from tests.support.topics import produce_raw, read_topic


def test_a_store_outage_pauses_consumption_and_loses_nothing(
    topics: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue("database_url_postgres_available")
    database_url = next(iter(request.getfixturevalue("_postgres_url_for_proxy")))
    host_part = database_url.split("@", 1)[1]
    database = host_part.split("/", 1)[1]
    sent = invoices(1200)
    with tcp_proxy("127.0.0.1", 5432) as proxy:
        proxied = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/{database}"
        settings = {
            "DATABASE_URL": proxied,
            **topics,
            "BATCH_MAX_REQUESTS": "400",
            "BATCH_MAX_WAIT_SECONDS": "2",
            "CREATE_TIMEOUT_SECONDS": "5",
        }
        with running_pipeline(tmp_path, processing_seconds=0.5, settings=settings) as pipeline:
            produce_raw(pipeline.bootstrap, topics["INPUT_TOPIC"], encoded(sent[:400]))
            time.sleep(4)
            proxy.cut()
            produce_raw(pipeline.bootstrap, topics["INPUT_TOPIC"], encoded(sent[400:]))
            time.sleep(10)  # longer than the 6 s session timeout: membership must survive
            pipeline.check_alive()
            proxy.restore()
            out = read_topic(
                pipeline.bootstrap,
                topics["OUTPUT_TOPIC"],
                len(sent),
                120,
                check=pipeline.check_alive,
                settle=3,
            )
    ids = [r["invoice_id"] for r in decode_all(out)]
    assert len(ids) == len(set(ids)) == len(sent)
    events = [
        json.loads(line)["event"]
        for line in (tmp_path / "consumer.log").read_text().splitlines()
        if line.startswith("{")
    ]
    assert "store or DLQ write failed; partitions paused until it is back" in events
    assert "store is back; partitions resumed" in events
    before_shutdown = events[: events.index("stop requested")]
    assert "partitions revoked" not in before_shutdown, "the group lost the consumer in the outage"
