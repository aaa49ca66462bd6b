"""The benches' second local broker, librdkafka's mock cluster (``--broker rdkafka-mock``):
it starts with the topics asked for (it has no CreateTopics), serves a consumer group
through aiokafka, carries a whole ``recall bench e2e`` run, and stops with the stack."""

from __future__ import annotations

import argparse
import asyncio
import json

import pytest

from devtools.localstack import LocalStackError, local_stack
from devtools.rdkafka_mock import parse_topic
from recall.cli import main


@pytest.mark.parametrize("text", ["clicks", "clicks:", ":4", "clicks:0", "clicks:-1",
                                  "clicks:x"])
def test_a_topic_is_name_colon_partitions(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="NAME:PARTITIONS"):
        parse_topic(text)


def test_a_topic_name_may_hold_colons() -> None:
    assert parse_topic("a:b:3") == ("a:b", 3)


def test_the_stack_names_its_brokers() -> None:
    with pytest.raises(LocalStackError, match="tansu, rdkafka-mock"), local_stack(broker="kafka"):
        pass
    with pytest.raises(LocalStackError, match="picks its own port"), local_stack(
            kafka_port=19999, broker="rdkafka-mock"):
        pass


@pytest.mark.integration
def test_the_mock_broker_holds_its_topics_and_serves_a_consumer_group() -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from stream.kafka import create_topics

    async def round_trip(bootstrap: str) -> tuple[dict[str, set[int]], list[tuple]]:
        # the topics exist, so this asks the broker for none (it could not make them)
        await create_topics(bootstrap, ["requests", "rtt"], 4)
        prod = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
        cons = AIOKafkaConsumer("requests", bootstrap_servers=bootstrap, group_id="g",
                                auto_offset_reset="earliest", fetch_max_wait_ms=10)
        await prod.start()
        await cons.start()
        try:
            parts = {t: await prod.partitions_for(t) for t in ("requests", "rtt")}
            await prod.send_and_wait("requests", b"v", key=b"k", partition=2)
            got: list[tuple] = []
            for _ in range(100):
                batch = await cons.getmany(timeout_ms=200)
                got += [(r.partition, r.key, r.value) for rs in batch.values() for r in rs]
                if got:
                    break
            await cons.commit()
            committed = await cons.committed(next(iter(batch)))
            return parts, [*got, ("committed", committed)]
        finally:
            await cons.stop()
            await prod.stop()

    with local_stack(topics={"requests": 3, "rtt": 1}, broker="rdkafka-mock") as stack:
        assert stack.kafka.name == "rdkafka-mock"
        parts, got = asyncio.run(round_trip(stack.bootstrap))
        proc = stack.kafka.proc
    assert parts == {"requests": {0, 1, 2}, "rtt": {0}}
    assert got == [(2, b"k", b"v"), ("committed", 1)]
    assert proc.poll() is not None  # stopped with the stack
    assert "mock broker on 127.0.0.1:" in stack.kafka.log_path.read_text()


def test_the_bench_picks_the_broker_of_the_local_stack_only(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "e2e", "--external", "--broker", "rdkafka-mock"]) != 0
    assert "--broker picks the local stack's broker" in capsys.readouterr().err


@pytest.mark.integration
def test_bench_e2e_runs_on_the_mock_broker(capsys: pytest.CaptureFixture[str], tmp_path,
                                           monkeypatch) -> None:
    monkeypatch.delenv("RECALL_METRICS_PORT", raising=False)
    monkeypatch.chdir(tmp_path)
    status = main(["bench", "e2e", "--broker", "rdkafka-mock", "--items", "2000",
                   "--users", "100", "--rate", "50", "--click-rate", "100", "--seconds", "2",
                   "--freshness", "5", "--settle", "0", "--broker-floor"])
    assert status == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert lines[0].startswith("local stack: Kafka (rdkafka-mock) 127.0.0.1:")
    figures = json.loads(lines[-1])
    assert figures["broker"] == "rdkafka-mock"
    # the worker (faust, aiokafka) answered every request through the mock broker
    assert figures["requests_sent"] == 100
    assert figures["responses"] == 100 and figures["lost"] == 0 and figures["errors"] == 0
    assert figures["freshness_missed"] == 0
    # the probes' topics were made at start: the broker round trip and its floor ran
    assert figures["broker_rtt_p50_ms"] > 0
    assert figures["broker_floor_lost"] == 0 and figures["broker_floor_p50_ms"] > 0
