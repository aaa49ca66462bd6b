"""librdkafka's mock cluster as a second local broker for the benchmarks.

Why a second broker: Tansu's memory engine, the local broker of the tests and benches,
takes longer per fetch the more single-record batches a partition holds
(docs/benchmarks.md, "Where a request's e2e goes"), so a 30 s run at 500 requests/s
measures Tansu's growing partitions more than the worker; and no Apache Kafka runs on a
machine without a Docker engine or Maven. librdkafka, the C client bundled in the
confluent-kafka wheel, carries a mock cluster: a Kafka-protocol broker in one process,
with an in-memory log per partition, consumer groups and committed offsets, that
aiokafka and faust talk to as to Kafka.

What it is not: a production broker, nor Kafka's figures. It has no CreateTopics, so its
topics are made at start from the command line (the local stack's ``create_topics`` then
finds them and asks for nothing); it has one broker and nothing on disk, so none of
Kafka's replication or log costs; and it holds a fetch that finds nothing for the
consumer's whole wait, where Kafka answers as soon as a record arrives, so a request's
wait for a fetch is longer on it than on Kafka. Each partition keeps only its last 5 MB
or 100,000 batches (librdkafka's fixed limits for the mock), dropping the oldest: a
consumer further behind than that loses records, so a run that reports lost requests or
clicks on this broker has to be read with that in mind (the benches' runs at the target
load keep up within milliseconds).

Run as a child process by :func:`devtools.localstack.start_rdkafka_mock`, for ``recall
bench e2e --broker rdkafka-mock`` (and ``bench capacity``); the tests' fixtures and the
demo use Tansu.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

from devtools.errors import DevtoolsError


def library_path() -> str:
    """librdkafka as the confluent-kafka wheel bundles it (a recent release, with the
    mock cluster's API; the system's may be older)."""
    spec = importlib.util.find_spec("confluent_kafka")
    if spec is not None and spec.origin:
        site = Path(spec.origin).parent.parent
        found = sorted(site.glob("confluent_kafka.libs/librdkafka*.so*"))
        if found:
            return str(found[0])
    raise DevtoolsError("no librdkafka for the mock broker: pip install confluent-kafka")


def parse_topic(text: str) -> tuple[str, int]:
    """``NAME:PARTITIONS`` -> (name, partitions)."""
    name, sep, parts = text.rpartition(":")
    if not sep or not name or not parts.isdigit() or int(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME:PARTITIONS (>= 1), got {text!r}")
    return name, int(parts)


class MockCluster:
    """One mock cluster, alive until :meth:`close`; ``bootstrap`` is its address."""

    def __init__(self, lib_path: str, topics: Mapping[str, int]) -> None:
        lib = ctypes.CDLL(lib_path)
        vp, cp = ctypes.c_void_p, ctypes.c_char_p
        for name, res, args in (
                ("rd_kafka_conf_new", vp, []),
                ("rd_kafka_conf_set", ctypes.c_int, [vp, cp, cp, cp, ctypes.c_size_t]),
                ("rd_kafka_new", vp, [ctypes.c_int, vp, cp, ctypes.c_size_t]),
                ("rd_kafka_destroy", None, [vp]),
                ("rd_kafka_mock_cluster_new", vp, [vp, ctypes.c_int]),
                ("rd_kafka_mock_cluster_destroy", None, [vp]),
                ("rd_kafka_mock_cluster_bootstraps", cp, [vp]),
                ("rd_kafka_mock_topic_create", ctypes.c_int, [vp, cp, ctypes.c_int,
                                                              ctypes.c_int])):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        self._lib = lib
        err = ctypes.create_string_buffer(512)
        conf = lib.rd_kafka_conf_new()
        # the handle only hosts the cluster: it has no brokers of its own to warn about
        lib.rd_kafka_conf_set(conf, b"log_level", b"3", err, len(err))
        self._rk = lib.rd_kafka_new(0, conf, err, len(err))  # 0: a producer handle
        if not self._rk:
            raise DevtoolsError(f"librdkafka: {err.value.decode(errors='replace')}")
        self._cluster = lib.rd_kafka_mock_cluster_new(self._rk, 1)
        if not self._cluster:
            lib.rd_kafka_destroy(self._rk)
            raise DevtoolsError("librdkafka could not start its mock cluster")
        for name, parts in topics.items():
            code = lib.rd_kafka_mock_topic_create(self._cluster, name.encode(), parts, 1)
            if code:
                self.close()
                raise DevtoolsError(f"mock broker: topic {name!r} not created (error {code})")
        self.bootstrap: str = lib.rd_kafka_mock_cluster_bootstraps(self._cluster).decode()

    def close(self) -> None:
        if self._cluster:
            self._lib.rd_kafka_mock_cluster_destroy(self._cluster)
            self._cluster = None
        if self._rk:
            self._lib.rd_kafka_destroy(self._rk)
            self._rk = None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devtools.rdkafka_mock",
                                description="librdkafka's mock cluster as a local broker")
    p.add_argument("--topic", type=parse_topic, action="append", default=[],
                   metavar="NAME:PARTITIONS", help="a topic to create (repeat)")
    p.add_argument("--port-file", type=Path, required=True,
                   help="written with HOST:PORT once the broker listens")
    args = p.parse_args(argv)
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # before librdkafka starts its threads
    cluster = MockCluster(library_path(), dict(args.topic))
    try:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(cluster.bootstrap)
        tmp.replace(args.port_file)  # whole, or not there
        print(f"mock broker on {cluster.bootstrap}; topics "
              f"{', '.join(f'{n}:{k}' for n, k in args.topic) or '-'}", flush=True)
        signal.sigwait(stop)
    finally:
        cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
