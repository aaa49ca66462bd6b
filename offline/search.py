"""Model search: the embedding and user-vector settings that recall best on a data set.

No setting is good everywhere (on one real log the best user vector was the mean of many
clicks, on another the last click alone; Caselles-Dupré et al., "Word2vec applied to
Recommendation: Hyperparameters Matter", RecSys 2018, found the negative-sampling
exponent, window and epochs move HitRate by large factors, differently per data set).
So the settings are searched per data set:

- objective: HitRate@k of exact search on a **validation split carved from the training
  clicks only**: each user's last training click is held out (leave-last-one-out), the
  model is trained on the rest, the user's vector is made from the rest. The caller's
  test clicks are never given to this module;
- space: ``method`` (item2vec / deepwalk / node2vec), ``ns_exponent`` (-1..1),
  ``window``, ``epochs``, ``sample``, ``negative``, ``min_count``, walk settings and
  Node2Vec's ``p``, ``q`` for the graph methods; the user window (1..100 clicks) and
  decay half-life. The vector size is not searched: it is ``RECALL_DIM``, the worker's.
  More user-vector settings join through :data:`USER_SPACE` (a hook);
- Optuna's TPE sampler; the product's defaults are the first trial, so the search
  reports how far it got beyond them; bad trials are pruned (median rule) from the
  validation HitRate reported after epochs 1, 2, 4, 8, ...;
- stops after ``trials`` or ``budget`` seconds (a trial running at the deadline
  finishes). The chosen settings are retrained on all training clicks by the caller.

Reproducibility: with a seed, ``workers=1`` and ``trials`` (not a time budget) the
search is repeatable run to run: the TPE sampler, walks and gensim are seeded, and
gensim with one thread is deterministic. With more threads gensim is not, and a time
budget makes the number of trials depend on the machine's speed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from offline.clicklog import ClickLog
from offline.model import UserParams
from offline.train import METHODS, VECTORS, TrainParams, train_embeddings

log = logging.getLogger(__name__)

#: extra user-vector settings to search: each hook suggests its settings on the trial and
#: returns them; they land in ``UserParams.extra`` and reach the scorer (e.g. the number
#: of interest vectors of a multi-interest user, once the scorer knows it)
USER_SPACE: list[Callable[[Any], dict[str, Any]]] = []

#: epochs after which a trial reports its validation HitRate (pruning points)
_REPORT_EPOCHS = frozenset(2 ** i for i in range(8))


@dataclass(frozen=True)
class SearchConfig:
    k: int = 10
    trials: int | None = None  # None: until the budget
    budget: float | None = None  # seconds; None: until the trials
    seed: int = 0
    methods: tuple[str, ...] = METHODS
    max_users: int = 2000  # validation users scored per trial (sampled with seed)
    workers: int = 1
    fixed_window: int | None = None  # user window not searched (set in the environment)
    fixed_half_life: float | None = None  # same for the decay half-life


@dataclass
class SearchResult:
    train: TrainParams
    user: UserParams
    best: float  # validation HitRate@k of the chosen settings
    defaults: float | None  # ... of the defaults (first trial), None if pruned/failed
    trials: int
    pruned: int
    failed: int
    seconds: float
    top: list[dict[str, Any]]  # best trials, for the summary

    def summary(self) -> dict[str, Any]:
        return {
            "chosen": {"train": dataclasses.asdict(self.train), "user": self.user.to_dict()},
            "validation_hit_rate": round(self.best, 4),
            "defaults_validation_hit_rate": (None if self.defaults is None
                                             else round(self.defaults, 4)),
            "trials": self.trials, "pruned": self.pruned, "failed": self.failed,
            "seconds": round(self.seconds, 1), "top": self.top,
        }

    def describe(self, k: int) -> str:
        t, u = self.train, self.user
        model = (f"{t.method} ns_exponent={t.ns_exponent:.2f} window={t.window} "
                 f"epochs={t.epochs} sample={t.sample:.1e} negative={t.negative} "
                 f"min_count={t.min_count} pop_weight={t.pop_weight:.2f} "
                 f"vectors={t.vectors}")
        if t.method != "item2vec":
            model += f" walks_per_node={t.walks_per_node} walk_length={t.walk_length}"
        if t.method == "node2vec":
            model += f" p={t.p:.2f} q={t.q:.2f}"
        user = f"user window={u.window} half_life={u.half_life:.0f}s" + "".join(
            f" {k}={v}" for k, v in u.extra.items())
        lines = [f"search: {self.trials} trials ({self.pruned} pruned, {self.failed} failed) "
                 f"in {self.seconds:.0f} s; validation HitRate@{k}: chosen {self.best:.4f}"
                 + ("" if self.defaults is None else f", defaults {self.defaults:.4f}"),
                 f"chose {model}; {user}",
                 f"best trials (validation HitRate@{k}):"]
        lines += [f"  #{r['number']:<4} {r['value']:.4f}  {r['params']}" for r in self.top]
        return "\n".join(lines)


def split_last_train(train: ClickLog) -> tuple[ClickLog, ClickLog]:
    """(fit, valid): each user's last click (users with two or more) is held out."""
    from offline.evaluate import split_last

    return split_last(train, holdout=1)


class Validation:
    """The held-out last training click of a sample of users, and how to score on it."""

    def __init__(self, train: ClickLog, k: int, max_users: int, seed: int) -> None:
        fit, valid = split_last_train(train)
        self.fit, self.valid, self.k = fit, valid, k
        self.max_users, self.seed = max_users, seed

    def score(self, ids: list[str], vectors: np.ndarray, user: UserParams) -> float:
        """Exact-search HitRate@k of the held-out clicks, users' vectors as ``user`` says."""
        from offline.evaluate import EvalConfig, evaluate

        # extra user settings the evaluation knows (multi-interest: interests,
        # session_gap) reach it; USER_SPACE hooks name them so
        known = {f.name for f in dataclasses.fields(EvalConfig)}
        extra = {k: v for k, v in user.extra.items() if k in known}
        cfg = EvalConfig(k=self.k, window=user.window, half_life=user.half_life,
                         max_users=self.max_users, seed=self.seed, bootstrap=0, **extra)
        res = evaluate(self.fit, self.valid, ids, vectors, cfg, methods=("exact",),
                       progress=False)
        return float(res["methods"]["exact"]["hit_rate"])


def _suggest(trial: Any, base: TrainParams, cfg: SearchConfig,
             ) -> tuple[TrainParams, UserParams]:
    methods = cfg.methods
    method = (trial.suggest_categorical("method", list(methods)) if len(methods) > 1
              else methods[0])
    kw: dict[str, Any] = dict(
        method=method,
        ns_exponent=trial.suggest_float("ns_exponent", -1.0, 1.0),
        window=trial.suggest_int("window", 1, 20, log=True),
        epochs=trial.suggest_int("epochs", 1, 40, log=True),
        sample=trial.suggest_float("sample", 1e-6, 1e-1, log=True),
        negative=trial.suggest_int("negative", 1, 20, log=True),
        min_count=trial.suggest_int("min_count", 1, 5),
        pop_weight=trial.suggest_float("pop_weight", 0.0, 3.0),
        vectors=trial.suggest_categorical("vectors", list(VECTORS)),
    )
    if method != "item2vec":
        kw.update(walks_per_node=trial.suggest_int("walks_per_node", 2, 12, log=True),
                  walk_length=trial.suggest_int("walk_length", 5, 40, log=True))
    if method == "node2vec":
        kw.update(p=trial.suggest_float("p", 0.25, 4.0, log=True),
                  q=trial.suggest_float("q", 0.25, 4.0, log=True))
    window = (cfg.fixed_window if cfg.fixed_window is not None
              else trial.suggest_int("user_window", 1, 100, log=True))
    half_life = 0.0
    if cfg.fixed_half_life is not None:
        half_life = cfg.fixed_half_life
    elif window > 1 and trial.suggest_categorical("decay", [False, True]):
        half_life = trial.suggest_float("half_life", 60.0, 30 * 86400.0, log=True)
    extra: dict[str, Any] = {}
    for hook in USER_SPACE:
        extra.update(hook(trial))
    return dataclasses.replace(base, **kw), UserParams(window, half_life, extra)


def _as_trial(train: TrainParams, user: UserParams, cfg: SearchConfig) -> dict[str, Any]:
    """Optuna parameters for given settings (to enqueue the defaults as a trial)."""
    p: dict[str, Any] = {"ns_exponent": train.ns_exponent, "window": train.window,
                         "epochs": train.epochs, "sample": train.sample,
                         "negative": train.negative, "min_count": train.min_count,
                         "pop_weight": train.pop_weight, "vectors": train.vectors}
    if len(cfg.methods) > 1:
        p["method"] = train.method
    if cfg.fixed_window is None:
        p["user_window"] = user.window
    window = cfg.fixed_window or user.window
    if cfg.fixed_half_life is None and window > 1:
        p["decay"] = user.half_life > 0
        if user.half_life > 0:
            p["half_life"] = user.half_life
    return p


def search(train: ClickLog, base: TrainParams, defaults: UserParams, cfg: SearchConfig,
           progress: bool = True, validation: Validation | None = None) -> SearchResult:
    """Search settings on ``train`` (the caller's training clicks; nothing else)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if cfg.trials is None and cfg.budget is None:
        raise ValueError("give a number of trials or a time budget")
    methods = tuple(cfg.methods)
    val = validation or Validation(train, cfg.k, cfg.max_users, cfg.seed)
    base = dataclasses.replace(base, workers=cfg.workers, seed=cfg.seed)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=8),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0),
    )
    if base.method in methods:
        study.enqueue_trial(_as_trial(base, defaults, cfg))
    chosen: dict[int, tuple[TrainParams, UserParams]] = {}

    def objective(trial: Any) -> float:
        tp, up = _suggest(trial, base, cfg)
        chosen[trial.number] = (tp, up)
        t0 = time.perf_counter()

        def on_epoch(epoch: int, ids: list[str], vectors: np.ndarray) -> None:
            if epoch < tp.epochs and epoch in _REPORT_EPOCHS:
                trial.report(val.score(ids, vectors, up), epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()

        try:
            ids, vectors = train_embeddings(val.fit, tp, progress=False, on_epoch=on_epoch)
        except ValueError as exc:  # e.g. min_count leaves no item: a bad trial, not a crash
            trial.set_user_attr("error", str(exc))
            raise optuna.TrialPruned() from None
        value = val.score(ids, vectors, up)
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 2))
        return value

    t0 = time.perf_counter()
    study.optimize(objective, n_trials=cfg.trials, timeout=cfg.budget,
                   show_progress_bar=progress, catch=(FloatingPointError,))
    seconds = time.perf_counter() - t0
    states = optuna.trial.TrialState
    done = [t for t in study.trials if t.state == states.COMPLETE]
    if not done:
        raise ValueError("no trial completed: raise the budget or the number of trials")
    best = study.best_trial
    first = study.trials[0]
    top = sorted(done, key=lambda t: -t.value)[:5]
    tp, up = chosen[best.number]
    return SearchResult(
        train=tp, user=up, best=float(best.value),
        defaults=(float(first.value) if first.state == states.COMPLETE
                  and base.method in methods else None),
        trials=len(study.trials),
        pruned=sum(t.state == states.PRUNED for t in study.trials),
        failed=sum(t.state == states.FAIL for t in study.trials),
        seconds=seconds,
        top=[{"number": t.number, "value": round(float(t.value), 4),
              "params": {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v)
                             else v) for k, v in t.params.items()}} for t in top],
    )
