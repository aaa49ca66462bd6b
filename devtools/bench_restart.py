"""``recall bench restart``: how long a worker killed with ``kill -9`` takes to serve again.

On the local stack (Tansu + redis-server): a catalogue of ``--items`` loaded into Redis,
one worker, a few users warmed up; then ``--kills`` times: SIGKILL the worker, start a
new one at once, and send a request every 50 ms until one is answered. For each restart
it prints, in seconds after the kill: the new process's /metrics port up, its "Ready"
(index loaded), its partitions assigned, and the first answer -- so the wait for the
consumer group (the dead member's session) is told apart from the process's own start.
``--session`` sets RECALL_KAFKA_SESSION_TIMEOUT (the trade-off is in the README).
Ends with one JSON line; prints the load average (the machine may be shared) and the
worker's peak memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

#: seconds between probe requests while the worker restarts
PROBE_EVERY = 0.05


def add_parser(sub: Any, bench_sub: Any) -> None:
    p = bench_sub.add_parser(
        "restart", help="kill -9 the worker, restart it: seconds until it serves again")
    p.add_argument("--items", type=int, default=800, help="catalogue size (default 800)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--kills", type=int, default=3, help="kills measured (default 3)")
    p.add_argument("--session", type=float, default=1.5,
                   help="consumer-group session timeout, s (RECALL_KAFKA_SESSION_TIMEOUT)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] \[(\d+)\] (.*)$")


def _events(log: Path, pid: int) -> dict[str, float]:
    """Epoch seconds of the first Ready and first assignment logged by process ``pid``."""
    found: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        m = _STAMP.match(line)
        if not m or int(m.group(2)) != pid:
            continue
        when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if "[^Worker]: Ready" in m.group(3):
            found.setdefault("ready", when)
        elif "recall-requests partitions assigned" in m.group(3):
            found.setdefault("assigned", when)
    return found


def run(args: argparse.Namespace) -> int:
    from devtools.e2e.catalogue import load_catalogue
    from devtools.localstack import start_worker, worker_stack
    from devtools.procinfo import RssWatch, loadavg
    from recall.config import Settings

    base = Settings(dim=args.dim, topic_partitions=4, app_id=f"restart-{uuid.uuid4().hex[:6]}")
    workdir = Path(tempfile.mkdtemp(prefix="recall-restart-"))

    def load(s: Settings) -> None:
        asyncio.run(load_catalogue(s, argparse.Namespace(items=args.items, seed=args.seed),
                                   keep_old=False))

    rows: list[dict[str, float]] = []
    peak = 0
    with worker_stack(base, workdir=workdir, before_worker=load, worker_timeout=600,
                      kafka_session_timeout=args.session) as (settings, _, worker):
        assert worker is not None
        original = worker  # the stack stops this one; a restarted one is ours to stop
        log = workdir / "worker.log"

        async def measure() -> None:
            nonlocal worker, peak
            from devtools.client import RecallClient

            client = RecallClient(settings)
            await client.start()
            try:
                print(f"first start: serving after {await client.wait_ready(600):.1f}s",
                      flush=True)
                for n in range(args.kills):
                    await asyncio.sleep(2.0)
                    peak = max(peak, RssWatch(worker.proc.pid).peak())
                    t_kill = time.time()
                    worker.proc.kill()
                    worker.proc.wait(10)
                    started: dict[str, Any] = {}

                    def restart(box: dict[str, Any] = started) -> None:
                        box["svc"] = start_worker(settings.environ(), log,
                                                  settings.metrics_port, 600)
                        box["port_up"] = time.time()

                    thread = threading.Thread(target=restart, daemon=True)
                    thread.start()
                    answered = None
                    while answered is None:
                        rid = await client.send_request(f"probe-{n}", k=1)
                        try:
                            await asyncio.wait_for(client.expect(rid), PROBE_EVERY)
                            answered = time.time()
                        except asyncio.TimeoutError:
                            pass
                    thread.join()
                    worker = started["svc"]
                    ev = _events(log, worker.proc.pid)
                    row = {"metrics_up_s": started["port_up"] - t_kill,
                           "ready_s": ev.get("ready", float("nan")) - t_kill,
                           "assigned_s": ev.get("assigned", float("nan")) - t_kill,
                           "first_answer_s": answered - t_kill}
                    rows.append(row)
                    print(f"kill {n + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()),
                          flush=True)
                peak = max(peak, RssWatch(worker.proc.pid).peak())
            finally:
                await client.stop()

        try:
            asyncio.run(measure())
        finally:
            if worker is not original:
                worker.stop()
    firsts = [r["first_answer_s"] for r in rows]
    summary = {"bench": "restart", "items": args.items, "session_s": args.session,
               "kills": len(rows), "first_answer_s": [round(x, 2) for x in firsts],
               "median_first_answer_s": round(statistics.median(firsts), 2) if firsts else None,
               "median_ready_s": round(statistics.median(r["ready_s"] for r in rows), 2)
               if rows else None,
               "worker_peak_rss_mb": round(peak / 2**20), "loadavg": loadavg()}
    print(f"kill -9 -> serving again: median {summary['median_first_answer_s']} s "
          f"(session timeout {args.session} s, {args.items} items, load average "
          f"{summary['loadavg']}, worker peak RSS {summary['worker_peak_rss_mb']} MB)")
    print(json.dumps(summary))
    return 0
