"""Dev tools: the local stack, a Kafka client, the demo, synthetic traffic and benchmarks.

Production code (``recall`` core, storage, ``stream``, ``offline``) never imports this
package (an import-linter contract checks it); the tests and the ``recall`` entry point do.
"""
