"""Parsing: a raw callback body (bytes) in, frozen event dataclasses out.

- ``load``: the format, the encoding and the safety bounds; the one safe XML reader (no
  DTD, no entity, bounded depth and size) that every XML cicb reads goes through.
- ``fields`` and ``outputs``: typed reads of the loaded tree, and the objects a job wrote.
- ``values`` and ``events``: the event types and the small values they are made of.
- ``jobs``, ``workflows``, ``moderation``: one node of the tree to its event.
- ``queries``: telling a job query answer from a callback.
- ``reader``: ``parse`` (and ``events_of``), from a body to its events.

It imports only ``pipeline.errors`` and ``pipeline.logs``: nothing here knows about
brokers, Celery or HTTP.
"""

from pipeline.parsing.reader import events_of, parse

__all__ = ["events_of", "parse"]
