"""Seeded LSH hasher and incremental in-memory index with multi-probe and exact re-rank.

INTERFACE SPEC (filled in by the implementation; consumers in stream/ and offline/ code
against exactly these names):

    @dataclass(frozen=True)
    class LSHParams:
        family: str = "pstable"      # "pstable": h(v)=floor((x·v+b)/w); "simhash": sign(x·v)
        dim: int = 64
        k: int                       # hash functions per table (AND)
        L: int                       # tables (OR)
        w: float                     # bucket width (pstable only)
        T: int                       # probes per table (multi-probe; 1 = home bucket only)
        seed: int = 42
        def to_dict(self) -> dict; @classmethod from_dict(d) -> LSHParams   # JSON-able

    class Hasher:                    # deterministic from LSHParams (same seed, same buckets
        def __init__(self, params)   #  in every process)
        def keys(self, vectors: np.ndarray (n,D) float32) -> np.ndarray (n, L) int64
            # one bucket key per table (the k-tuple folded to an int64)
        def probe_keys(self, q: np.ndarray (D,)) -> np.ndarray (L, T) int64
            # home bucket first, then the T-1 most likely neighbouring buckets

    def normalize(vectors) -> np.ndarray   # L2-normalise rows (float32); raises
                                           # ValueError for zero / non-finite rows

    @dataclass
    class QueryResult:
        ids: list[str]               # best first
        scores: np.ndarray           # float32 cosine, best first
        candidates: int              # distinct candidates re-ranked

    class LSHIndex:
        def __init__(self, params: LSHParams)
        params, hasher, dim
        def __len__(self) -> int; def __contains__(self, item_id: str) -> bool
        def add(self, ids: Sequence[str], vectors: np.ndarray) -> None
            # upsert one or many (existing ids are moved to their new buckets);
            # vectors are normalised here; no rebuild
        def remove(self, ids: Sequence[str]) -> int          # how many were present
        def vectors_of(self, ids: Sequence[str]) -> tuple[np.ndarray (n,D), np.ndarray bool (n,)]
            # normalised vectors (zeros where missing) and a "present" mask
        def query(self, q: np.ndarray (D,), k: int, exclude: Collection[str] = ()) -> QueryResult
            # LSH candidates -> exact cosine re-rank -> top-k, excluded ids left out
        def exact(self, q, k, exclude=()) -> QueryResult   # brute force over all items
        def ids(self) -> list[str]
"""
