"""The settings a vector file was made with, written next to it as ``<stem>.model.json``.

``recall train`` writes it (the training settings, and the user-vector settings that go
with the vectors: chosen by ``--search``, else the defaults below); ``recall load``
carries its ``user`` part into the index version's metadata, so the worker computes user
vectors the way the search scored them (an explicit ``RECALL_USER_WINDOW`` /
``RECALL_USER_DECAY_HALF_LIFE`` still wins). Layout::

    {"train": {TrainParams fields}, "user": {"window": int, "half_life": float, ...},
     "search": {...summary of the search, when there was one}}

``user`` may carry more keys (e.g. multi-interest settings); readers keep them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offline.clicklog import atomic_path
from offline.train import TrainParams
from offline.vectors import VectorFileError


@dataclass(frozen=True)
class UserParams:
    """How a user's vector is made from their clicks (see :mod:`recall.users`)."""

    window: int = 50
    half_life: float = 0.0  # seconds; 0 = plain mean
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. multi-interest settings

    def to_dict(self) -> dict[str, Any]:
        return {"window": self.window, "half_life": self.half_life, **self.extra}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> UserParams:
        rest = {k: v for k, v in doc.items() if k not in ("window", "half_life")}
        window, half_life = int(doc["window"]), float(doc.get("half_life", 0.0))
        if window < 1 or half_life < 0:
            raise ValueError(f"user window must be >= 1 and half_life >= 0, got {doc}")
        return cls(window, half_life, rest)


#: user-vector settings a plain ``recall train`` writes next to its vectors (chosen from
#: model searches on several logs: docs/offline.md, "Defaults")
DEFAULT_USER = UserParams(window=5, half_life=0.0)


def resolve_user(settings: Any, explicit: frozenset[str], chosen: UserParams | None,
                 fallback: UserParams = DEFAULT_USER) -> tuple[UserParams, str]:
    """(user settings, where they came from), as the worker resolves them
    (:func:`recall.config.user_vector_settings`): each RECALL_USER_* variable set
    explicitly wins, else ``chosen`` (a model file), else ``fallback``."""
    from recall.config import USER_VECTOR_KEYS, user_vector_settings

    base = chosen if chosen is not None else fallback
    doc = base.to_dict()
    values, source = user_vector_settings(settings, doc, explicit)
    keep = {k: v for k, v in values.items()
            if k in doc or USER_VECTOR_KEYS[k] in explicit}
    if chosen is None:
        source = source.replace("index version", "default")
    else:
        source = source.replace("index version", "model file")
    return UserParams.from_dict({**doc, **keep}), source


def model_path(vectors_path: str | os.PathLike[str]) -> Path:
    """``items.npz`` -> ``items.model.json``."""
    p = Path(vectors_path)
    return p.with_name(p.name.removesuffix(".npz") + ".model.json")


def write_model(path: str | os.PathLike[str], train: TrainParams, user: UserParams,
                search: dict[str, Any] | None = None) -> None:
    doc: dict[str, Any] = {"train": dataclasses.asdict(train), "user": user.to_dict()}
    if search is not None:
        doc["search"] = search
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def read_user_params(path: str | os.PathLike[str]) -> UserParams | None:
    """The ``user`` part of a model file; None when there is no such file."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return UserParams.from_dict(doc["user"])
    except FileNotFoundError:
        return None
    except KeyError as exc:
        raise VectorFileError(f"{path}: not a model file: no {exc} key") from None
    except (OSError, ValueError, TypeError) as exc:
        raise VectorFileError(f"{path}: not a model file: {exc}") from None
