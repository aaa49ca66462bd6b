"""Where numba keeps the compiled kernels: one cache directory per version of their
sources.

numba checks a cached function against its own file only (modification time and size).
A kernel that calls or inlines one from another file (``recall/lsh/pending.py`` and
``recall/lsh/ids.py`` call ``recall/kernels.py``) carries the callee's machine code in its
own cache entry, so after a change to the callee's file alone it kept running the old
callee: a working tree updated by ``git pull`` served stale kernels without a word.
Keying the directory by a hash of every kernel file makes any change to any of them a
fresh cache, compiled once.

Every module defining ``cache=True`` kernels imports this module before its first
``@njit``: numba reads ``config.CACHE_DIR`` when a cached function is defined. The base is
``NUMBA_CACHE_DIR`` when set (the Docker image compiles into it at build time), else
``$XDG_CACHE_HOME/realtime-recall/numba`` (``~/.cache`` by default).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from numba.core import config

#: the files whose kernels are cached, relative to the ``recall`` package
KERNEL_FILES = ("kernels.py", "rerankkernels.py", "buildkernels.py", "userkernels.py",
                "exactkernels.py", "lsh/ids.py", "lsh/pending.py")


def sources_key(root: Path, files: tuple[str, ...] = KERNEL_FILES) -> str:
    """A short hash of the kernel files' contents (their names included)."""
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode())
        digest.update((root / name).read_bytes())
    return digest.hexdigest()[:16]


def cache_dir(root: Path, environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """The cache directory for the kernel sources under ``root``."""
    base = environ.get("NUMBA_CACHE_DIR") or os.path.join(
        environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "realtime-recall", "numba")
    return os.path.join(base, sources_key(root))


# set directly on numba's config, not in the environment: child processes compute their
# own key, and numba keeps a value set here until a NUMBA_* variable changes
config.CACHE_DIR = cache_dir(Path(__file__).parent)
