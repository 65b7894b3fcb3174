"""Everything about the broker: what crosses it, and how it is written and read.

- ``queues``: queue names, the transport options every process shares, connections.
- ``envelope``: a callback as it crosses the broker (raw body, received time, request id).
- ``publishing``: task messages sent through Celery (any broker kombu supports).
- ``fastpath``: the receiver's Redis fast path, writing Celery's message itself.
- ``inflight``: every task message kept until its task finishes, and the sweep (Redis).
- ``deadletters``: the dead-letter queue: put, list, replay, purge.
- ``kind``: ``kind_of(settings)``, the one place that tells brokers apart.

It may import settings, logs and errors; never ``parsing``, ``actions`` or ``workers``.
"""
