"""Lua scripts queued on a pipeline, without the round trip redis-py adds for them.

redis-py sends a pipeline's scripts as ``EVALSHA`` and, so that none fails for a script
Redis does not know (after a restart, a failover), first asks ``SCRIPT EXISTS`` in a round
trip of its own, every time. Queued here as ``EVAL`` with the script's text, they cannot be
unknown, and the pipeline stays one round trip (Redis caches the compiled script by its
hash either way).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.commands.core import AsyncScript, Script


def queue_script(
    pipe: Any, script: Script | AsyncScript, keys: Sequence[Any], args: Sequence[Any]
) -> None:
    """Queue ``script`` on ``pipe`` (a pipeline, sync or asyncio) with ``keys`` and ``args``."""
    pipe.eval(script.script, len(keys), *keys, *args)
