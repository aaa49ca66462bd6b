"""What the machine did during the e2e benchmark's measured phase: CPU per process and
per CPU, and (``--py-spy FILE``) a py-spy profile of the worker.

Why: the worker's latency depends on the processes it talks to. With ``--pin-worker`` the
broker, Redis, the load generators and this process share the other CPUs; when those are
saturated, records wait before the worker even sees them. The figures say which process
used how much of a core over the phase, and how busy each CPU was.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process and its threads so far; None once gone."""
    import psutil

    try:
        t = psutil.Process(pid).cpu_times()
    except Exception:
        return None
    return float(t.user + t.system)


def _system_seconds(pid: int) -> float | None:
    """System (kernel) CPU seconds of a process so far (page faults, syscalls)."""
    import psutil

    try:
        return float(psutil.Process(pid).cpu_times().system)
    except Exception:
        return None


def minor_faults(pid: int) -> int | None:
    """Minor page faults of a process so far (``/proc/PID/stat``): pages it touched
    for the first time since the OS gave them, e.g. heap given back and taken again."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[7])


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds so far of each thread of a process (psutil's ``threads()``), by name:
    ``main`` (the thread with the process's id: the worker's event loop), else
    ``thread:ID``. Empty once the process is gone."""
    import psutil

    try:
        threads = psutil.Process(pid).threads()
    except psutil.Error:
        return {}
    return {"main" if t.id == pid else f"thread:{t.id}": t.user_time + t.system_time
            for t in threads}


def _busy_per_cpu() -> list[tuple[float, float]]:
    """(busy, total) seconds per CPU since boot (busy: all but idle and iowait)."""
    import psutil

    out = []
    for t in psutil.cpu_times(percpu=True):
        total = sum(t)
        out.append((total - t.idle - getattr(t, "iowait", 0.0), total))
    return out


def py_spy_binary() -> str | None:
    """py-spy from this interpreter's environment, else from PATH."""
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def thread_shares(before: dict[str, float], after: dict[str, float], wall: float,
                  keep: int = 4) -> dict[str, float]:
    """Each thread's CPU between two :func:`thread_cpu_seconds` readings as a fraction
    of a core: ``main``, the ``keep`` busiest others, and the rest summed as ``other``
    (a thread started meanwhile counts from 0)."""
    used = {n: max(0.0, t - before.get(n, 0.0)) / max(1e-9, wall) for n, t in after.items()}
    main = used.pop("main", 0.0)
    top = sorted(used.items(), key=lambda kv: -kv[1])
    out = {"main": round(main, 3), **{n: round(v, 3) for n, v in top[:keep]}}
    if len(top) > keep:
        out["other"] = round(sum(v for _, v in top[keep:]), 3)
    return out


class PhaseWatch:
    """CPU of named processes (``{name: pid}``) and of each CPU between :meth:`start` and
    :meth:`stop`; with ``py_spy``, the worker (``profile_pid``) is recorded meanwhile
    (sampling without pausing it: ``--nonblocking``), to a speedscope JSON file."""

    def __init__(self, pids: dict[str, int], py_spy: str = "", profile_pid: int | None = None,
                 rate: int = 200) -> None:
        self.pids = dict(pids)
        self.py_spy = py_spy
        self.profile_pid = profile_pid
        self.rate = rate
        self._t0 = 0.0
        self._cpu0: dict[str, float | None] = {}
        self._busy0: list[tuple[float, float]] = []
        self._spy: subprocess.Popen | None = None
        self._threads0: dict[str, float] = {}
        self._sys0: float | None = None
        self._faults0: int | None = None
        self._missing = False  # --py-spy asked for, no py-spy to run

    def start(self, seconds: float) -> None:
        """The phase begins now and lasts about ``seconds`` (the profile's duration)."""
        self._t0 = time.monotonic()
        self._cpu0 = {name: _cpu_seconds(pid) for name, pid in self.pids.items()}
        self._busy0 = _busy_per_cpu()
        if self.profile_pid is not None:
            self._threads0 = thread_cpu_seconds(self.profile_pid)
            self._sys0 = _system_seconds(self.profile_pid)
            self._faults0 = minor_faults(self.profile_pid)
        if self.py_spy and self.profile_pid is not None:
            exe = py_spy_binary()
            if exe is None:
                print("warning: --py-spy: no py-spy found (pip install py-spy)", flush=True)
                self._missing = True
                return
            self._spy = subprocess.Popen(
                [exe, "record", "--pid", str(self.profile_pid), "--duration",
                 str(max(1, int(seconds))), "--rate", str(self.rate), "--nonblocking",
                 "--format", "speedscope", "-o", self.py_spy],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def _reap_spy(self, timeout: float = 60.0) -> tuple[bytes, float | None]:
        """Wait for py-spy (it stops after the phase's duration) with ``wait4``, which
        gives its own CPU seconds: (its stderr, CPU seconds or None if it had to be
        killed)."""
        assert self._spy is not None
        deadline = time.monotonic() + timeout
        cpu = None
        while True:
            pid, status, usage = os.wait4(self._spy.pid, os.WNOHANG)
            if pid:
                self._spy.returncode = os.waitstatus_to_exitcode(status)
                cpu = usage.ru_utime + usage.ru_stime
                break
            if time.monotonic() > deadline:
                self._spy.kill()
                self._spy.wait()
                break
            time.sleep(0.05)
        err = self._spy.stderr.read() if self._spy.stderr is not None else b""
        return err, cpu

    def stop(self) -> dict[str, Any]:
        """Figures since :meth:`start`: each process's CPU as a fraction of one core, each
        CPU's busy fraction, the profile written (or why not)."""
        wall = max(1e-9, time.monotonic() - self._t0)
        share = {}
        for name, pid in self.pids.items():
            now, then = _cpu_seconds(pid), self._cpu0.get(name)
            share[name] = None if now is None or then is None else round((now - then) / wall, 3)
        busy = [round((b1 - b0) / max(1e-9, t1 - t0), 3)
                for (b0, t0), (b1, t1) in zip(self._busy0, _busy_per_cpu(), strict=False)]
        out: dict[str, Any] = {"cpu_share": share, "cpu_busy": busy}
        if self.profile_pid is not None:
            out["worker_threads"] = thread_shares(
                self._threads0, thread_cpu_seconds(self.profile_pid), wall)
            now = _system_seconds(self.profile_pid)
            # of the worker's CPU, how much the kernel took for it (page faults, syscalls)
            out["worker_system"] = (None if now is None or self._sys0 is None
                                    else round((now - self._sys0) / wall, 3))
            faults = minor_faults(self.profile_pid)
            out["worker_minor_faults_per_s"] = (
                None if faults is None or self._faults0 is None
                else round((faults - self._faults0) / wall, 1))
        if self._missing:
            out["py_spy"] = None
        if self._spy is not None:
            err, cpu = self._reap_spy()
            if cpu is not None:  # on the CPUs of the rest, like the bench: say how much
                share["py_spy"] = round(cpu / wall, 3)
            ok = self._spy.returncode == 0 and Path(self.py_spy).exists()
            out["py_spy"] = self.py_spy if ok else None
            if not ok:
                print(f"warning: py-spy failed ({self._spy.returncode}): "
                      f"{err.decode(errors='replace')[-500:]}", flush=True)
        return out
