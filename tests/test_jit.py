"""The compiled kernels' on-disk cache is keyed by every kernel file: a change to a
callee's file alone must not leave its callers' cached code (with the old callee inside)
in use."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from numba.core import config
from numba.core.dispatcher import Dispatcher

from recall import jit

ROOT = Path(jit.__file__).parent


def _copy(tmp_path: Path) -> Path:
    for name in jit.KERNEL_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def test_a_change_to_any_kernel_file_gives_another_cache_directory(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    env = {"NUMBA_CACHE_DIR": "/cache"}
    before = jit.cache_dir(root, env)
    for name in jit.KERNEL_FILES:
        path = root / name
        text = path.read_text()
        path.write_text(text + "\n# changed\n")
        assert jit.cache_dir(root, env) != before, name
        path.write_text(text)
    assert jit.cache_dir(root, env) == before


def test_the_base_is_numba_cache_dir_else_the_user_cache() -> None:
    key = jit.sources_key(ROOT)
    assert jit.cache_dir(ROOT, {"NUMBA_CACHE_DIR": "/app/c"}) == f"/app/c/{key}"
    assert jit.cache_dir(ROOT, {"XDG_CACHE_HOME": "/x"}) == f"/x/realtime-recall/numba/{key}"


def test_every_cached_kernel_lives_in_the_keyed_directory() -> None:
    """Each module with ``cache=True`` kernels is listed and imports jit before them."""
    defining = sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
                      if "cache=True" in p.read_text() and p.name != "jit.py")
    assert defining == sorted(jit.KERNEL_FILES)
    checked = 0
    for name in jit.KERNEL_FILES:
        module = importlib.import_module("recall." + name[:-3].replace("/", "."))
        for value in vars(module).values():
            if isinstance(value, Dispatcher) and value.__module__ == module.__name__:
                path = getattr(value._cache, "_cache_path", None)
                if path is not None:
                    assert path.startswith(config.CACHE_DIR), (name, value.__name__)
                    checked += 1
    assert checked >= len(jit.KERNEL_FILES)
    assert jit.cache_dir(ROOT) == config.CACHE_DIR


def _kernel_cache_paths() -> set[Path]:
    """The directories of numba's cache that hold this tree's kernels."""
    paths = set()
    for name in jit.kernel_modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if isinstance(value, Dispatcher) and value.__module__ == name:
                path = getattr(value._cache, "_cache_path", None)
                if path is not None:
                    paths.add(Path(path))
    return paths


_IN_WORKER = """
from stream.worker import _warm_up
from numba.core.dispatcher import Dispatcher
import importlib
from recall import jit
_warm_up()
print(sum(sum(v._cache_misses.values()) for m in jit.kernel_modules()
          for v in vars(importlib.import_module(m)).values() if isinstance(v, Dispatcher)))
print(jit.uncached())
"""


def test_kernels_missing_from_the_cache_are_compiled_by_a_child_not_the_worker(
        tmp_path: Path) -> None:
    """A worker that compiled its kernels itself kept LLVM's modules for its life (~150 MB
    of malloc in use more after the warm-up, a watch-live run at 1M items 780 MB against
    ~600): the kernels missing from numba's cache (here the exact search's: quick to
    compile) are compiled by a child, and the worker's warm-up loads every kernel."""
    from stream.worker import _warm_up

    _warm_up()  # this tree's cache filled (loaded when it is)
    base = Path(config.CACHE_DIR)
    cache = tmp_path / "numba"
    for path in _kernel_cache_paths():
        shutil.copytree(path, cache / base.name / path.relative_to(base), dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("exactkernels.*"))
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache),
           "PYTHONPATH": os.pathsep.join([str(ROOT.parent), os.environ.get("PYTHONPATH", "")])}
    check = subprocess.run([sys.executable, "-c", "from recall import jit; print(jit.uncached())"],
                           env=env, capture_output=True, text=True, check=True)
    assert check.stdout.split("\n")[0] == "['recall.exactkernels']"
    done = subprocess.run([sys.executable, "-c", _IN_WORKER], env=env, capture_output=True,
                          text=True, check=True)
    compiled_here, missing = done.stdout.split("\n")[:2]
    assert (compiled_here, missing) == ("0", "[]"), done.stderr[-2000:]
