"""LSH: seeded hashing, the bucket table, and the incremental in-memory index.

- :mod:`recall.lsh.params`  :class:`LSHParams` and :func:`normalize`
- :mod:`recall.lsh.hashing` :class:`Hasher`: bucket keys and multi-probe keys
- :mod:`recall.lsh.buckets` :class:`SortedBuckets`: the CSR bucket table
- :mod:`recall.lsh.index`   :class:`LSHIndex`: ``search(queries, k, exclude=None)``
"""

from recall.lsh.hashing import Hasher
from recall.lsh.index import LSHIndex, QueryResult
from recall.lsh.params import FAMILIES, LSHParams, normalize

__all__ = ["FAMILIES", "Hasher", "LSHIndex", "LSHParams", "QueryResult", "normalize"]
