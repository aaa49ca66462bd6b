"""realtime-recall: the shared core used by the online worker (stream/) and batch jobs (offline/).

- ``recall.config``     settings from environment variables
- ``recall.lsh``        seeded LSH hasher and incremental in-memory index with multi-probe
- ``recall.tuner``      picks LSH parameters for a target recall@k
- ``recall.monitor``    live recall: sampling budget, estimate, probe controller (pure)
- ``recall.users``      rolling (optionally time-decayed) user vectors
- ``recall.userstate``  one user's window and sums, and their stored formats
- ``recall.store``      the Redis layout: durable, shared state
- ``recall.messages``   parsing and validation of the contract's messages
- ``recall.cli``        the ``recall`` entry point (imports every layer; nothing imports it)
"""

__version__ = "0.1.0"
