"""LSH: seeded hashing, the bucket table, and the incremental in-memory index.

- :mod:`recall.lsh.params`  :class:`LSHParams` and :func:`normalize`
- :mod:`recall.lsh.hashing` :class:`Hasher`: bucket keys and multi-probe keys
- :mod:`recall.lsh.buckets` :class:`BucketTable`: the CSR bucket table, in parts
- :mod:`recall.lsh.index`   :class:`LSHIndex`: the index, its writes and merges
- :mod:`recall.lsh.pending` :class:`PendingBuckets`: items added since the last merge
- :mod:`recall.lsh.reserve` per-slot arrays that grow without a copy
- :mod:`recall.lsh.search`  its reads: ``search(queries, k, exclude=None, *, exact=False)``
"""

from recall.lsh.hashing import Hasher
from recall.lsh.index import LSHIndex
from recall.lsh.params import FAMILIES, LSHParams, normalize
from recall.lsh.search import QueryResult

__all__ = ["FAMILIES", "Hasher", "LSHIndex", "LSHParams", "QueryResult", "normalize"]
