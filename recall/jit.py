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
import importlib
import os
from pathlib import Path

from numba.core import config
from numba.core.dispatcher import Dispatcher

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


def kernel_modules(files: tuple[str, ...] = KERNEL_FILES) -> list[str]:
    """The modules of the kernel files (``lsh/ids.py`` -> ``recall.lsh.ids``)."""
    return ["recall." + name[:-3].replace("/", ".") for name in files]


def uncached(modules: list[str] | None = None) -> list[str]:
    """The kernel modules of which numba's cache holds no kernel for this machine: a cache
    directory not filled yet (new kernel sources, a new ``NUMBA_CACHE_DIR``), a checkout
    at another path (numba keys its entries by the source file's path too), a kernel file
    touched since (and by its modification time), another CPU. Their first calls compile.

    A module counts as cached when one of its kernels is: the others are inlined into
    callers or compiled from the same warm-up. A module whose entries cannot be read (numba's
    cache internals changed) counts as not cached."""
    missing = []
    for name in modules if modules is not None else kernel_modules():
        module = importlib.import_module(name)
        try:
            found = False
            for value in vars(module).values():
                if (isinstance(value, Dispatcher) and value.__module__ == name
                        and hasattr(value._cache, "_cache_file")):
                    magic = value.targetctx.codegen().magic_tuple()
                    index = value._cache._cache_file._load_index()
                    if any(key[1] == magic for key in index):
                        found = True
                        break
        except Exception:  # numba's internals changed: count it as not cached
            found = False
        if not found:
            missing.append(name)
    return missing
