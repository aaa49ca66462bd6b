"""Process figures the benchmarks print: load average and resident memory (peak and now)."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path


def loadavg() -> float | None:
    """The 1-minute load average (the machine is shared: say how busy it was)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process, MiB."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def status_bytes(names: tuple[str, ...], pid: int | str = "self") -> dict[str, int]:
    """Memory fields (VmHWM, VmRSS, RssAnon...) of a process's /proc status, in bytes;
    {} once it is gone."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in names:
                out[name] = int(rest.split()[0]) * 1024
    return out


def status_mb(field: str) -> float:
    """A memory field of this process's status (VmRSS, VmHWM...), MiB; 0 if absent."""
    return status_bytes((field,)).get(field, 0) / 2**20


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its RSS now (Linux 4.0+), so the next peak read is
    of what follows; False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_mb() -> float:
    """Resident memory of this process now, MiB."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: fall back to the peak
        return peak_rss_mb()


class RssWatch:
    """Samples another process's RSS; the peak comes from the kernel (VmHWM) when readable."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.max_sampled = 0

    def sample(self) -> int:
        if self.pid is None:
            return 0
        try:
            import psutil

            rss = int(psutil.Process(self.pid).memory_info().rss)
        except Exception:
            return 0
        self.max_sampled = max(self.max_sampled, rss)
        return rss

    def peak(self) -> int:
        """Peak RSS in bytes: the kernel's VmHWM while the process lives (read it before
        stopping the process: afterwards only the sampled maximum is left)."""
        if self.pid is None:
            return 0
        return self.status().get("VmHWM", self.max_sampled)

    def status(self) -> dict[str, int]:
        """VmHWM (peak), VmRSS, RssAnon (heap, arrays) and RssFile (mapped files such as
        shared libraries: clean pages the kernel can drop) in bytes; {} once gone."""
        if self.pid is None:
            return {}
        return status_bytes(("VmHWM", "VmRSS", "RssAnon", "RssFile"), self.pid)
