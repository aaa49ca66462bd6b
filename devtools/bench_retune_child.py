"""The cost re-tune's child process on a whole catalogue, as a worker runs it: its peak
memory (what a container limit must allow beside the worker), where that peak is made,
its CPU time and its verdict.

``python -m devtools.bench_retune_child --items 1000000 --probes 14``: ``recall bench
index``'s clustered catalogue (same seed) staged into an index served with the default
layout for its size at ``--probes`` (a streamed 1M catalogue ends at pstable k=10 L=16
T=14), written out by the worker's own ``write_snapshot``, then
``stream.tunejobs.tune_cheaper_whole`` in a spawned process (as the worker's process
pool starts it), with a thread there sampling its VmRSS and the call stack every 20 ms.
Prints the child's VmHWM, the stack at the sampled peak, the largest RSS per phase (the
innermost three frames of recall/ and stream/), the verdict, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback
from dataclasses import replace
from typing import Any

from devtools.procinfo import status_mb


def _where(ident: int) -> str:
    """The call stack of thread ``ident`` (its frames in recall/ and stream/)."""
    frame = sys._current_frames().get(ident)
    if frame is None:
        return ""
    return " > ".join(f"{os.path.basename(fs.filename)}:{fs.name}:{fs.lineno}"
                      for fs in traceback.extract_stack(frame)
                      if "/recall/" in fs.filename or "/stream/" in fs.filename)


def sampled_child(path: str, rows: int, target: float, current: dict[str, Any],
                  every: float = 0.02) -> dict[str, Any]:
    """Child process: tune_cheaper_whole with its RSS and stack sampled beside it."""
    from stream.tunejobs import tune_cheaper_whole

    main, stop = threading.main_thread().ident or 0, threading.Event()
    phases: dict[str, float] = {}
    peak: list[Any] = [0.0, ""]

    def sample() -> None:
        while not stop.wait(every):
            rss, where = status_mb("VmRSS"), _where(main)
            phase = " > ".join(where.split(" > ")[-3:])
            phases[phase] = max(phases.get(phase, 0.0), rss)
            if rss > peak[0]:
                peak[:] = [rss, where]

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    out = tune_cheaper_whole(path, rows, target, current)
    stop.set()
    thread.join()
    return {"out": out, "wall_s": round(time.perf_counter() - t0, 1),
            "vmhwm_mb": round(status_mb("VmHWM"), 1), "sampled_peak_mb": round(peak[0], 1),
            "peak_at": peak[1], "phases": phases}


def main(argv: list[str] | None = None) -> int:
    from devtools.procinfo import loadavg
    from offline.synthetic import clustered_catalogue
    from recall.lsh import LSHIndex
    from recall.tuner import suggested_params
    from stream.tunejobs import child_pool, write_snapshot

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--probes", type=int, default=14, help="T of the served layout")
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0, help="the catalogue's (bench index's)")
    args = p.parse_args(argv)
    load_start = loadavg()
    x, _ = clustered_catalogue(args.items, args.dim, seed=args.seed)
    served = replace(suggested_params(args.items, args.dim), T=args.probes)
    index = LSHIndex(served)
    index.reserve(len(x))
    for a in range(0, len(x), 65_536):
        index.stage([f"i{i}" for i in range(a, min(a + 65_536, len(x)))], x[a:a + 65_536])
    del x
    path, rows = write_snapshot(index)
    del index
    try:
        with child_pool() as pool:
            res = pool.submit(sampled_child, path, rows, args.target,
                              served.to_dict()).result()
    finally:
        os.unlink(path)
    out, phases = res.pop("out"), res.pop("phases")
    print(f"child: VmHWM {res['vmhwm_mb']} MB (sampled peak {res['sampled_peak_mb']} MB at "
          f"{res['peak_at']}); {out['cpu']:.0f} s CPU, {res['wall_s']} s wall", flush=True)
    print("largest RSS per phase (MB, the top 12):")
    for phase, mb in sorted(phases.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {mb:7.0f}  {phase}")
    verdict = f"move to {out['params']}" if out["params"] else "no move"
    print(f"served {served.describe()}: {verdict}; {out['why']}; passes "
          f"{out.get('ratios')}\n{out['summary']}", flush=True)
    print(json.dumps({"bench": "retune-child", "items": rows, "dim": args.dim, **res,
                      "cpu_s": round(out["cpu"], 1), "moved_to": out["params"],
                      "ratios": out.get("ratios"), "loadavg_start": load_start,
                      "loadavg_end": loadavg()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
