"""The checks of what cicb keeps: the broker, the state's Redis, dead letters, the archive.

- A Redis must answer PING, take a write (and its delete: a replica refuses it) and run with
  ``maxmemory-policy noeviction``: an evicted key is a callback, a dedup key or a
  completion record silently lost. When ``CONFIG`` is not allowed (managed Redis) the
  policy is a warning to check by hand.
- Dead letters waiting are a warning: each is a callback no route finished.
- The archive warns from ``ARCHIVE_WARN_RATIO`` (90%) of ``CICB_ARCHIVE_MAX_ENTRIES``: past
  the limit the oldest callbacks leave before their retention ends.
"""

from __future__ import annotations

import uuid
from typing import Final
from urllib.parse import urlsplit

import redis

from pipeline.archive import Archive
from pipeline.brokers.deadletters import DeadLetterQueue
from pipeline.brokers.kind import BrokerKind
from pipeline.brokers.queues import connection, dead_letter_queue, ping
from pipeline.doctor.checks import Check, failing, passed, warned
from pipeline.endpoints import RedisEndpoint
from pipeline.settings import Settings

REDIS_TIMEOUT_S: Final = 3.0
ARCHIVE_WARN_RATIO: Final = 0.9
NO_EVICTION: Final = "noeviction"
DOCTOR_KEY_TTL_MS: Final = 10_000  # the probe key outlives no interrupted doctor


def broker(settings: Settings, kind: BrokerKind) -> Check:
    if kind.broker is not None:
        return redis_store("broker", kind.broker, setting="CICB_BROKER_URL")
    with connection(settings) as conn:
        try:
            ping(conn)
        except Exception as exc:
            return failing(
                "broker",
                f"{address(settings.broker_url)} does not answer: {exc}",
                "start the broker, or fix CICB_BROKER_URL",
            )
    return passed("broker", f"{address(settings.broker_url)} answers")


def state(kind: BrokerKind) -> Check:
    if kind.state is None:
        return warned(
            "state",
            "no Redis for state: no deduplication, archive, leases or reconcile checkpoints",
            "set CICB_REDIS_URL",
        )
    # Kept in the broker's Redis without CICB_REDIS_URL: checked again, under its own name.
    setting = "CICB_BROKER_URL" if kind.state_url == kind.broker_url else "CICB_REDIS_URL"
    return redis_store("state", kind.state, setting=setting)


def redis_store(name: str, endpoint: RedisEndpoint, *, setting: str) -> Check:
    """PING, a write and its delete, and the eviction policy of one Redis."""
    where = address(endpoint.url)
    client = endpoint.client(timeout_s=REDIS_TIMEOUT_S)
    try:
        client.ping()
        probe = f"cicb:doctor:{uuid.uuid4().hex}"
        client.set(probe, b"1", px=DOCTOR_KEY_TTL_MS)
        client.delete(probe)
        try:
            policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
        except redis.ResponseError:
            return warned(
                name,
                f"{where} answers and takes writes; CONFIG GET is not allowed",
                f"make sure its maxmemory-policy is {NO_EVICTION}: an evicted key is lost work",
            )
    except redis.ResponseError as exc:
        return failing(name, f"{where} refuses a write: {exc}", f"point {setting} at a primary")
    except redis.RedisError as exc:
        return failing(name, f"{where} unreachable: {exc}", f"start it, or fix {setting}")
    finally:
        client.close()
    if policy != NO_EVICTION:
        return failing(
            name,
            f"{where} has maxmemory-policy {policy}: it evicts keys when full",
            f"CONFIG SET maxmemory-policy {NO_EVICTION} (and in its config file)",
        )
    return passed(name, f"{where} answers, takes writes, maxmemory-policy {NO_EVICTION}")


def dead_letters(settings: Settings) -> Check:
    queue = DeadLetterQueue(lambda: connection(settings), dead=dead_letter_queue(settings))
    _, waiting = queue.peek(0)
    if waiting:
        return warned(
            "dead-letters",
            f"{waiting} dead letter(s) waiting",
            "cicb dlq list; then cicb dlq replay ID (or --all) once the cause is fixed",
        )
    return passed("dead-letters", "none waiting")


def archive(settings: Settings, kind: BrokerKind) -> Check:
    if not (settings.archive_retention_s and settings.archive_max_entries):
        return passed("archive", "off (CICB_ARCHIVE_RETENTION_S or _MAX_ENTRIES is 0)")
    client = kind.state_client(timeout_s=REDIS_TIMEOUT_S)
    if client is None:
        return warned("archive", "no Redis for state to keep it in", "set CICB_REDIS_URL")
    kept = Archive(
        client,
        retention_s=settings.archive_retention_s,
        max_entries=settings.archive_max_entries,
    )
    try:
        count = kept.count()
    finally:
        client.close()
    limit = settings.archive_max_entries
    shown = f"{count} of {limit} callbacks ({count / limit:.0%})"
    if count >= ARCHIVE_WARN_RATIO * limit:
        return warned(
            "archive",
            f"{shown}: the oldest leave before CICB_ARCHIVE_RETENTION_S",
            "raise CICB_ARCHIVE_MAX_ENTRIES (about 3 kB of Redis each), or cicb archive export",
        )
    return passed("archive", shown)


def address(url: str) -> str:
    """A broker or Redis URL without its password (Sentinels: each host)."""
    shown = []
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        host = f"{parts.hostname}:{parts.port}" if parts.port else f"{parts.hostname}"
        shown.append(f"{parts.scheme}://{host}{parts.path}")
    return ";".join(shown)
