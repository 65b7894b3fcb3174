"""The receiver: the ASGI app that takes Tencent CI's POSTs and puts them on the broker.

- ``app``: the Starlette app (``/callbacks``, ``/healthz``, ``/readyz``, ``/metrics``).
- ``access``: tokens, source networks, the proxy header.

It parses nothing. It may import ``pipeline.brokers`` (to enqueue, and to read the queues'
depths for ``/metrics``), ``pipeline.metrics``, ``pipeline.logguard`` (throttled refusal
logs, redaction), settings, logs and errors; nothing imports it but the CLI.
"""
