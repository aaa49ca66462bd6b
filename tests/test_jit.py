"""The compiled kernels' on-disk cache is keyed by every kernel file: a change to a
callee's file alone must not leave its callers' cached code (with the old callee inside)
in use."""

from __future__ import annotations

import importlib
import shutil
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
