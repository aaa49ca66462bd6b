"""What the offline subcommands share: each argument group defined once, and the steps
more than one command takes (training parameters from the flags, the model search, the
user-vector settings that go with a vector file).

Only the standard library at module level (``recall --help`` stays fast).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from offline.errors import OfflineError

# --- argument groups -----------------------------------------------------------


def run_args(p: argparse.ArgumentParser, seed: bool = True) -> None:
    """``--seed`` and ``-q/--quiet``, which every offline command takes."""
    if seed:
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def format_arg(p: argparse.ArgumentParser,
               help: str = "log format (default: from the suffix, .csv[.gz] = csv, "
                           "else jsonl)") -> None:
    p.add_argument("--format", choices=["jsonl", "csv"], help=help)


def k_arg(p: argparse.ArgumentParser, help: str = "k of recall@k (default 10)") -> None:
    p.add_argument("-k", type=int, default=10, help=help)


def target_arg(p: argparse.ArgumentParser, help: str = "target recall@k (default 0.95)"
               ) -> None:
    p.add_argument("--target", type=float, default=0.95, help=help)


def train_args(p: argparse.ArgumentParser) -> None:
    """The embedding settings (gensim) and the model search: `recall train` and
    `recall eval` train the same way."""
    g = p.add_argument_group("embeddings (gensim Word2Vec, skip-gram, negative sampling)")
    g.add_argument("--method", choices=["item2vec", "deepwalk", "node2vec"],
                   help="sequences: sessions (item2vec) or random walks on the co-click "
                   "graph (default item2vec; with --search: searched among all three)")
    g.add_argument("--window", type=int, default=5, help="context window (default 5)")
    g.add_argument("--negative", type=int, default=5, help="negative samples (default 5)")
    g.add_argument("--ns-exponent", type=float, default=0.5,
                   help="negative sampling by count**x; may be negative (default 0.5)")
    g.add_argument("--min-count", type=int, default=1,
                   help="items clicked fewer times get no vector (default 1)")
    g.add_argument("--epochs", type=int, default=10, help="passes (default 10)")
    g.add_argument("--sample", type=float, default=1e-3,
                   help="down-sampling of frequent items (default 1e-3)")
    g.add_argument("--session-gap", type=float, default=1800.0,
                   help="cut a user's sequence at gaps longer than this, s (default 1800)")
    g.add_argument("--walks-per-node", type=int, default=10,
                   help="deepwalk/node2vec: walks started per item (default 10)")
    g.add_argument("--walk-length", type=int, default=20,
                   help="deepwalk/node2vec: items per walk (default 20)")
    g.add_argument("--p", type=float, default=1.0, help="node2vec return parameter (1)")
    g.add_argument("--q", type=float, default=1.0, help="node2vec in-out parameter (1)")
    g.add_argument("--pop-weight", type=float, default=1.9,
                   help="weight of a popularity component in the vectors (one of the "
                   "RECALL_DIM dimensions): recall leans to popular items; 0 = none "
                   "(default 1.9)")
    g.add_argument("--item-vectors", dest="vectors_of_items", default="in+out",
                   choices=["in", "out", "in+out"],
                   help="skip-gram's input vectors, output vectors or their sum "
                   "(default in+out)")
    g.add_argument("--workers", type=int, default=2,
                   help="training threads (default 2; 1 is bit-reproducible with --seed)")
    s = p.add_argument_group("model search (optuna; objective: HitRate@k on the last "
                             "training click of each user)")
    s.add_argument("--search", action="store_true",
                   help="search embedding and user-vector settings (--budget/--trials)")
    s.add_argument("--budget", type=float, default=None,
                   help="search time, s (a running trial finishes; default 600 unless "
                   "--trials)")
    s.add_argument("--trials", type=int, default=None, help="search trials (default: budget)")
    s.add_argument("--search-users", type=int, default=2000,
                   help="validation users scored per trial (2000)")


# --- shared steps --------------------------------------------------------------


def quiet_gensim(args: argparse.Namespace) -> None:
    """gensim logs every epoch at INFO; keep that for -v only."""
    import logging

    if not getattr(args, "verbose", False):
        logging.getLogger("gensim").setLevel(logging.WARNING)


def log_format(args: argparse.Namespace) -> str | None:
    return getattr(args, "format", None)


def train_params(args: argparse.Namespace, dim: int) -> Any:
    """The :class:`offline.train.TrainParams` of :func:`train_args`' flags."""
    from offline.train import TrainParams

    return TrainParams(dim=dim, method=args.method or "item2vec", window=args.window,
                       negative=args.negative, ns_exponent=args.ns_exponent,
                       min_count=args.min_count, epochs=args.epochs, sample=args.sample,
                       session_gap=args.session_gap, walks_per_node=args.walks_per_node,
                       walk_length=args.walk_length, p=args.p, q=args.q,
                       pop_weight=args.pop_weight, vectors=args.vectors_of_items,
                       workers=args.workers, seed=args.seed)


def run_search(args: argparse.Namespace, train: Any, settings: Any) -> Any:
    """Run the model search on ``train`` (training clicks only); prints its summary. A
    user window / half-life given explicitly (eval's --user-window / --half-life, or the
    RECALL_USER_* variables, which the worker obeys) is fixed, not searched."""
    from offline.model import resolve_user
    from offline.search import SearchConfig, search
    from offline.train import METHODS
    from recall.config import set_in_env

    explicit = set_in_env()
    defaults, _ = resolve_user(settings, explicit, None)
    window = getattr(args, "user_window", None)
    half_life = getattr(args, "half_life", None)
    if window is None and "user_window" in explicit:
        window = settings.user_window
    if half_life is None and "user_decay_half_life" in explicit:
        half_life = settings.user_decay_half_life
    cfg = SearchConfig(
        k=args.k, trials=args.trials, seed=args.seed,
        budget=600.0 if args.budget is None and args.trials is None else args.budget,
        methods=(args.method,) if args.method else METHODS, max_users=args.search_users,
        workers=args.workers, fixed_window=window, fixed_half_life=half_life)
    try:
        result = search(train, train_params(args, settings.dim), defaults, cfg,
                        progress=not args.quiet)
    except ValueError as exc:
        raise OfflineError(f"{args.log}: search: {exc}") from None
    print(result.describe(args.k), file=sys.stderr)
    return result


def user_settings(vectors_path: str, settings: Any) -> tuple[Any, Any, str]:
    """(the model file's user settings or None, the ones the worker will use, source):
    RECALL_USER_WINDOW / _DECAY_HALF_LIFE when set, else the model file's (written by
    `recall train` beside the vectors), else those settings' defaults."""
    from offline.model import UserParams, model_path, read_user_params, resolve_user
    from recall.config import set_in_env

    chosen = read_user_params(model_path(vectors_path))
    user, source = resolve_user(settings, set_in_env(), chosen, UserParams(
        settings.user_window, settings.user_decay_half_life))
    return chosen, user, source
