"""Rolling user vectors: the (weighted, optionally time-decayed) mean of the item vectors
of a user's last N clicks by timestamp, updated in O(d) per click.

INTERFACE SPEC (consumers code against these names):

    @dataclass
    class UserState:
        window: list of clicks kept, oldest first by ts; each (item_id: str, ts: float,
                weight: float, has_vector: bool)
        vsum: np.ndarray (D,) float64       # sum of weight * decay * vector over window
        wsum: float                         # sum of weight * decay over clicks WITH a vector
        ...
        def vector(self) -> np.ndarray (D,) float32 | None   # None when no usable click
        def seen(self) -> set[str]                            # item ids in the window
        def to_bytes(self) -> bytes; @classmethod from_bytes(b, dim) -> UserState
            # compact, documented encoding (stored in Redis by recall.store)

    class RollingUserVectors:          # policy: window size N, decay half-life (0 = none)
        def __init__(self, dim: int, window: int, half_life: float = 0.0)
        def new_state(self) -> UserState
        def apply(self, state, item_id, ts, weight, vector: np.ndarray | None) -> None
            # O(d): add the click in ts order; evict the oldest beyond N (subtracting
            # its contribution, needing its vector: the caller passes a lookup
            # callable at construction or per call -- see implementation)
        def recompute(self, state, lookup) -> None   # from scratch (exactness reference)
"""
