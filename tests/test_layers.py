"""Every module of recall/ is placed in a layer of the import contracts (.importlinter):
a new core module left out of them would escape the pure-core rule unseen."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def contract_modules(section: str, key: str) -> set[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    names = config[f"importlinter:contract:{section}"][key]
    return {n.strip() for line in names.splitlines() for n in line.replace("|", ":").split(":")
            if n.strip()}


def test_every_core_module_is_under_the_core_contracts() -> None:
    top = {p.stem if p.suffix == ".py" else p.name for p in (ROOT / "recall").iterdir()
           if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()}
    core = top - {"cli", "store"}  # the entry point and the storage layer
    layers = contract_modules("layers", "layers")
    assert {f"recall.{m}" for m in core} <= layers, "add the new core module to .importlinter"
    assert {f"recall.{m}" for m in core} == contract_modules("pure-core", "source_modules")
    assert {f"recall.{m}" for m in core} <= contract_modules("no-devtools", "source_modules")
    assert {"recall.cli", "recall.store", "stream", "offline", "devtools"} <= layers
