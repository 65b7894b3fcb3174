"""Where a Redis is, and a client that follows it.

``CICB_BROKER_URL`` and ``CICB_REDIS_URL`` name a Redis one of two ways:

- ``redis://`` (or ``rediss://``, ``unix://``): one address. A managed service's fixed
  endpoint that moves to the replica on failover is this kind: redis-py reconnects to it
  after the connection breaks, and finds the new primary behind it.
- ``sentinel://h1:26379;sentinel://h2:26379;sentinel://h3:26379/0`` (kombu's form): the
  Sentinels that know the primary of ``CICB_SENTINEL_MASTER`` (``mymaster``). Clients ask
  them for the primary when they connect, and again when it fails over. A password in the
  URL is the primary's; ``CICB_SENTINEL_PASSWORD`` is the Sentinels' own, if they have one.

``RedisEndpoint.parse`` checks the form (a bad address stops the process with one line);
``client`` and ``async_client`` make every client cicb uses, so each one follows the primary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel

from pipeline.errors import ConfigError, TransientError

SENTINEL_SCHEME = "sentinel"
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_MASTER = "mymaster"
REDIS_SCHEMES = ("redis", "rediss", "unix", SENTINEL_SCHEME)
# A client that cannot reach Redis says so within this long, rather than hanging a request.
DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class RedisEndpoint:
    url: str
    # The Sentinels, when the URL names them; empty for one address.
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = DEFAULT_MASTER
    sentinel_password: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(
        cls,
        url: str,
        *,
        master: str = DEFAULT_MASTER,
        sentinel_password: str | None = None,
        setting: str = "CICB_BROKER_URL",
    ) -> RedisEndpoint:
        """Raises ``ConfigError`` naming ``setting`` when ``url`` is not a Redis address."""
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if scheme not in REDIS_SCHEMES:
            raise ConfigError(
                f"{setting}: {_shown(url)} is not a redis://, rediss:// or sentinel:// URL"
            )
        if scheme != SENTINEL_SCHEME:
            try:
                redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
            except ValueError as exc:
                raise ConfigError(f"{setting}: {_shown(url)}: {exc}") from exc
            return cls(url=url)
        sentinels: list[tuple[str, int]] = []
        db, username, password = 0, None, None
        for part in (p.strip() for p in url.split(";")):
            if not part:
                continue
            try:
                parts = urlsplit(part)
                port = parts.port or DEFAULT_SENTINEL_PORT
                path = parts.path.strip("/")
                db = int(path) if path else db
            except ValueError as exc:
                raise ConfigError(f"{setting}: {_shown(part)}: {exc}") from exc
            if parts.scheme != SENTINEL_SCHEME or not parts.hostname:
                raise ConfigError(
                    f"{setting}: {_shown(part)} is not sentinel://host:port (Sentinels are "
                    "separated by ';')"
                )
            sentinels.append((parts.hostname, port))
            if parts.password is not None and password is None:
                username = unquote(parts.username) if parts.username else None
                password = unquote(parts.password)
        if not master:
            raise ConfigError("CICB_SENTINEL_MASTER must name the Sentinels' primary")
        return cls(
            url=url,
            sentinels=tuple(sentinels),
            master=master,
            sentinel_password=sentinel_password,
            db=db,
            username=username,
            password=password,
        )

    @property
    def is_sentinel(self) -> bool:
        return bool(self.sentinels)

    def client(self, *, timeout_s: float = DEFAULT_TIMEOUT_S, **options: Any) -> redis.Redis:
        """A client of the primary; through the Sentinels, it finds the new one on failover."""
        options = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s, **options}
        if not self.is_sentinel:
            return redis.Redis.from_url(self.url, **options)
        manager = redis.sentinel.Sentinel(
            list(self.sentinels), sentinel_kwargs=self._sentinel_kwargs(timeout_s)
        )
        client: redis.Redis = manager.master_for(self.master, **self._master_kwargs(), **options)
        return client

    def async_client(
        self, *, timeout_s: float = DEFAULT_TIMEOUT_S, **options: Any
    ) -> redis.asyncio.Redis:
        """``client``'s asyncio twin (the receiver's fast path)."""
        options = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s, **options}
        if not self.is_sentinel:
            return redis.asyncio.Redis.from_url(self.url, **options)
        manager = redis.asyncio.sentinel.Sentinel(
            list(self.sentinels), sentinel_kwargs=self._sentinel_kwargs(timeout_s)
        )
        client: redis.asyncio.Redis = manager.master_for(
            self.master, **self._master_kwargs(), **options
        )
        return client

    def transport_options(self) -> dict[str, Any]:
        """What kombu's Sentinel transport needs beside the URL (nothing for one address)."""
        if not self.is_sentinel:
            return {}
        options: dict[str, Any] = {"master_name": self.master}
        if self.sentinel_password:
            options["sentinel_kwargs"] = {"password": self.sentinel_password}
        return options

    def _sentinel_kwargs(self, timeout_s: float) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
        if self.sentinel_password:
            kwargs["password"] = self.sentinel_password
        return kwargs

    def _master_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"db": self.db}
        if self.password is not None:
            kwargs["password"] = self.password
        if self.username is not None:
            kwargs["username"] = self.username
        return kwargs


class NotReplicated(TransientError):
    """Redis took a write, and fewer replicas than ``CICB_MIN_REPLICAS`` confirmed it in
    time: a failover now could lose it."""

    def __init__(self, replicas: int, wanted: int, timeout_ms: int) -> None:
        self.replicas = replicas
        self.wanted = wanted
        super().__init__(
            f"{replicas} of {wanted} replica(s) confirmed the write within {timeout_ms} ms "
            "(CICB_MIN_REPLICAS)"
        )


@dataclass(frozen=True, slots=True)
class Replicas:
    """How many replicas a write that must outlive a failover waits for (``WAIT``), and how
    long (``CICB_MIN_REPLICAS``, ``CICB_REPLICA_TIMEOUT_MS``); 0: none, as by default."""

    wanted: int = 0
    timeout_ms: int = 1000

    def wait(self, pipe: Any) -> None:
        """Queue ``WAIT`` on ``pipe``, after the writes it must cover (nothing when none
        is wanted)."""
        if self.wanted:
            pipe.wait(self.wanted, self.timeout_ms)

    def check(self, answers: list[Any]) -> None:
        """Raise ``NotReplicated`` unless the pipe's last answer (``WAIT``'s) is enough."""
        if self.wanted and int(answers[-1]) < self.wanted:
            raise NotReplicated(int(answers[-1]), self.wanted, self.timeout_ms)


def _shown(url: str) -> str:
    """``url`` without its password, to be said in an error."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return repr("<unreadable URL>")
    if parts.password is None:
        return repr(url)
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return repr(parts._replace(netloc=netloc).geturl())
