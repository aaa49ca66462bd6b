"""``recall bench restart``: how long a worker killed with ``kill -9`` takes to serve again.

On the local stack (Tansu + redis-server): a catalogue of ``--items`` loaded into Redis,
one worker, a few users warmed up; then ``--kills`` times: SIGKILL the worker, start a
new one at once (as a supervisor -- docker's restart policy, systemd -- would), and send
a request every 50 ms until one is answered. For each restart it prints, in seconds after
the kill, the steps the new process logged (:data:`STEPS`: command line up, modules
imported, start-up check done, faust ready, group join begun, kernels ready, index
loaded, partitions assigned), its /metrics port up, and the first answer -- so the
process's own start, the index load and the wait for the consumer group (the dead
member's session) are told apart.
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


_STAMP = re.compile(r"^\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]? (.*)$")

#: the restart's steps, in order: (name, what the worker logs then)
STEPS = (
    ("cli_s", "start-up: interpreter and command line ready"),
    ("imported_s", "start-up: modules imported"),
    ("checked_s", "start-up: topics, broker and redis checked"),
    ("faust_ready_s", "[^Worker]: Ready"),
    ("joining_s", "(Re-)joining group"),
    ("kernels_s", "start-up: kernels ready"),
    ("index_s", "items loaded in"),
    ("assigned_s", "recall-requests partitions assigned"),
)


def _events(log: Path, start: int) -> dict[str, float]:
    """Epoch seconds of the first line of each of :data:`STEPS` the worker logged after
    byte ``start`` of its log (the restarted process's part)."""
    found: dict[str, float] = {}
    with log.open("rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    for line in text.splitlines():
        m = _STAMP.match(line)
        if not m:
            continue
        for name, marker in STEPS:
            if name not in found and marker in m.group(2):
                found[name] = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
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
                    log_start = log.stat().st_size
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
                    ev = _events(log, log_start)
                    row = {name: ev.get(name, float("nan")) - t_kill for name, _ in STEPS}
                    row["metrics_up_s"] = started["port_up"] - t_kill
                    row["first_answer_s"] = answered - t_kill
                    rows.append(row)
                    order = sorted(row, key=lambda k: (row[k] != row[k], row[k]))
                    print(f"kill {n + 1}: " + ", ".join(f"{k} {row[k]:.2f}" for k in order),
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
               "median_steps_s": {k: round(statistics.median(r[k] for r in rows), 2)
                                  for k in rows[0]} if rows else None,
               "worker_peak_rss_mb": round(peak / 2**20), "loadavg": loadavg()}
    print(f"kill -9 -> serving again: median {summary['median_first_answer_s']} s "
          f"(session timeout {args.session} s, {args.items} items, load average "
          f"{summary['loadavg']}, worker peak RSS {summary['worker_peak_rss_mb']} MB)")
    print(json.dumps(summary))
    return 0
