"""The Redis layout: durable, shared state of the index, user windows and popularity.

INTERFACE SPEC: see the implementation's module docstring for the key layout.
Writes are pipelined; the same command builders serve redis-py's sync (offline jobs)
and asyncio (worker) clients.
"""
