"""The compiled kernels' on-disk cache is keyed by every kernel file: a change to a
callee's file alone must not leave its callers' cached code (with the old callee inside)
in use."""

from __future__ import annotations

import asyncio
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
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


def _signatures() -> dict[str, int]:
    return {f"{name}.{key}": len(value.signatures)
            for name in jit.kernel_modules()
            for key, value in vars(importlib.import_module(name)).items()
            if isinstance(value, Dispatcher)}


def _signatures_after_a_worker_s_calls() -> None:
    """In a fresh process (the test's below): the warm-up, then what a worker runs; prints
    the kernels that met a signature the warm-up did not compile."""
    from recall.lsh import LSHIndex, LSHParams
    from recall.userbatch import apply_batch
    from recall.users import RollingUserVectors
    from stream.worker import _warm_up

    _warm_up()
    before = _signatures()
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((6000, 64)).astype(np.float32)
    ids = [f"i{j}" for j in range(len(vecs))]
    for family in ("pstable", "simhash"):
        index = LSHIndex(LSHParams(family=family, dim=64), merge="deferred")  # a load
        index.reserve(4000)
        index.stage(ids[:4000], vecs[:4000])
        index.build()
        index.add(ids[4000:], vecs[4000:])  # the items topic, then a merge off the loop
        asyncio.run(index.merge_off_loop(force=True))
        index.remove(ids[:10])
        index = index.relayout(LSHParams(family=family, dim=64, k=7, L=8))  # a re-pick
        index.search(vecs[:16], 10)
        index.search(vecs[:1], 10, exclude=[["i20"]])
    table = dict(zip(ids, vecs, strict=True))

    def lookup(items: list[str]) -> tuple[np.ndarray, list[bool]]:
        return (np.stack([table.get(i, np.zeros(64, np.float32)) for i in items]),
                [i in table for i in items])

    for interests in (1, 3):
        roll = RollingUserVectors(64, 4, 60.0, lookup=lookup, interests=interests)
        users = [roll.new_state() for _ in range(3)]
        apply_batch(roll, [(users[j % 3], f"i{j}", float(j), 1.0, f"e{j}") for j in range(20)])
    print(sorted(k for k, v in _signatures().items() if v != before[k]))


def test_the_warm_up_compiles_what_a_worker_runs() -> None:
    """Every kernel signature a worker calls is the warm-up's: one it first met later (a
    bulk build's keys, a first click batch) was compiled in the worker when numba's cache
    lacked it, the compile's memory kept for the worker's life. In a process of its own:
    this one's kernels met other tests' calls."""
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(ROOT.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c",
         "from tests.test_jit import _signatures_after_a_worker_s_calls as f; f()"],
        env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip().split("\n")[-1] == "[]", done.stderr[-2000:]
