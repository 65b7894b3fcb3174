"""Every ``CICB_`` setting, read from the environment once.

``get_settings()`` is the only reader of ``os.environ`` in cicb; everything else takes a
``Settings``. Units are in the names (``_s`` seconds, ``_bytes`` bytes).

Each setting is declared once, as a field made by ``setting()``: its variable, parser,
default and whether it is secret. ``Settings.from_env`` reads them all in one loop.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from pipeline.endpoints import REDIS_SCHEMES, RedisEndpoint
from pipeline.errors import ConfigError

T = TypeVar("T")
# A parser gets the variable's name (for its error) and raw value. None means "not set"
# (blank, or 0 for a count): the field keeps its default.
Parser = Callable[[str, str], Any]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_EMBEDDED_BROKER_PORT = 6390  # also in broker_url's default
# Worker pool processes per CPU when CICB_WORKER_CONCURRENCY is not set.
PROCESSES_PER_CPU = 2

# host, IPv4 or [IPv6], then an optional port: what the COS SDK takes as its Domain.
_HOST_PORT = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?"
)


def setting(name: str, *, default: T, parse: Parser, secret: bool = False) -> T:
    """A ``Settings`` field read from ``CICB_<name>`` by ``parse``; a secret stays out of
    the repr and is listed by ``Settings.secrets()``."""
    metadata = {"env": f"CICB_{name}", "parse": parse, "secret": secret}
    return field(default=default, repr=not secret, metadata=metadata)


def text(env: str, raw: str) -> str | None:
    return raw.strip() or None


def verbatim(env: str, raw: str) -> str | None:
    return raw or None  # not trimmed: a secret's spaces are its own


def upper(env: str, raw: str) -> str | None:
    return raw.strip().upper() or None


def path(env: str, raw: str) -> Path | None:
    return Path(raw.strip()) if raw.strip() else None


def is_set(env: str, raw: str) -> bool:
    return bool(raw.strip())


def comma_list(env: str, raw: str) -> tuple[str, ...]:
    """Trimmed items, empty ones skipped: a variable set but blank is ``()``, not unset."""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _number(convert: Callable[[str], T], what: str) -> Callable[[str, str], T | None]:
    def parse(env: str, raw: str) -> T | None:
        if not (raw := raw.strip()):
            return None
        try:
            return convert(raw)
        except ValueError as exc:
            raise ConfigError(f"{env} must be {what}: {raw!r}") from exc

    return parse


integer = _number(int, "an integer")
seconds = _number(float, "a number of seconds")


def count(env: str, raw: str) -> int | None:
    return integer(env, raw) or None  # 0 means "not set"


def _endpoint_parts(endpoint: str) -> tuple[str, str]:
    scheme, sep, netloc = endpoint.partition("://")
    if not sep:
        # "host:port" is no URL to urlsplit: "host" would be its scheme.
        scheme, netloc = "https", endpoint
    scheme, netloc = scheme.lower(), netloc.removesuffix("/")
    if scheme not in ("http", "https") or not _HOST_PORT.fullmatch(netloc):
        raise ConfigError(
            f"CICB_CI_ENDPOINT must be host[:port] or http(s)://host[:port]: {endpoint!r}"
        )
    return netloc, scheme


# COS bucket names end with their APPID; regions are like ap-guangzhou or na-siliconvalley.
_BUCKET = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?-\d+")
_REGION = re.compile(r"[a-z]+(?:-[a-z0-9]+)+")


def _is_http_url(url: str) -> bool:
    scheme, sep, rest = url.partition("://")
    return bool(sep) and scheme.lower() in ("http", "https") and bool(rest.split("/", 1)[0])


def _bucket_regions(entries: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """Raises ``ConfigError`` on an entry that is not ``BUCKET-APPID:REGION``."""
    pairs = []
    for entry in entries:
        bucket, sep, region = entry.partition(":")
        if not (sep and _BUCKET.fullmatch(bucket) and _REGION.fullmatch(region)):
            raise ConfigError(
                f"CICB_CI_BUCKETS: {entry!r} is not BUCKET-APPID:REGION "
                "(examplebucket-1250000000:ap-guangzhou)"
            )
        pairs.append((bucket, region))
    return tuple(dict.fromkeys(pairs))


def _embedded_broker_url(port: int) -> str:
    return f"redis://{DEFAULT_HOST}:{port}/0"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """cicb's configuration. Build it with ``from_env``; tests build it directly."""

    # Broker and state. broker_url's default is derived (see from_env): without
    # CICB_BROKER_URL, cicb talks to the embedded broker on CICB_EMBEDDED_BROKER_PORT.
    broker_url: str = setting(
        "BROKER_URL", default=_embedded_broker_url(DEFAULT_EMBEDDED_BROKER_PORT), parse=text
    )
    broker_configured: bool = setting("BROKER_URL", default=False, parse=is_set)
    redis_url: str | None = setting("REDIS_URL", default=None, parse=text)
    # Sentinel (pipeline.brokers.endpoints): the primary's name, and the Sentinels' password.
    sentinel_master: str = setting("SENTINEL_MASTER", default="mymaster", parse=text)
    sentinel_password: str | None = setting(
        "SENTINEL_PASSWORD", default=None, parse=verbatim, secret=True
    )
    # RabbitMQ: classic queues, or quorum queues (replicated over the cluster's nodes).
    queue_type: str = setting("QUEUE_TYPE", default="classic", parse=text)
    # A write that must outlive a failover waits until this many replicas have it (WAIT).
    min_replicas: int = setting("MIN_REPLICAS", default=0, parse=integer)
    replica_timeout_ms: int = setting("REPLICA_TIMEOUT_MS", default=1000, parse=integer)
    # Receiver.
    receiver_host: str = setting("RECEIVER_HOST", default=DEFAULT_HOST, parse=text)
    receiver_port: int = setting("RECEIVER_PORT", default=8080, parse=integer)
    receiver_token: str | None = setting(
        "RECEIVER_TOKEN", default=None, parse=verbatim, secret=True
    )
    receiver_tokens: tuple[str, ...] = setting(
        "RECEIVER_TOKENS", default=(), parse=comma_list, secret=True
    )
    receiver_url: str | None = setting("RECEIVER_URL", default=None, parse=verbatim)
    max_body_bytes: int = setting("MAX_BODY_BYTES", default=5 * 1024 * 1024, parse=integer)
    body_timeout_s: float = setting("BODY_TIMEOUT_S", default=10.0, parse=seconds)
    allowed_cidrs: tuple[str, ...] = setting("ALLOWED_CIDRS", default=(), parse=comma_list)
    proxy_header: str | None = setting("PROXY_HEADER", default=None, parse=text)
    # Deduplication and delivery.
    dedup_ttl_s: int = setting("DEDUP_TTL_S", default=7 * 24 * 3600, parse=integer)
    max_deliveries: int = setting("MAX_DELIVERIES", default=3, parse=integer)
    # Notify.
    notify_urls: tuple[str, ...] = setting("NOTIFY_URLS", default=(), parse=comma_list)
    notify_timeout_s: float = setting("NOTIFY_TIMEOUT_S", default=10.0, parse=seconds)
    notify_secret: str | None = setting("NOTIFY_SECRET", default=None, parse=verbatim, secret=True)
    # Routing.
    routes_modules: tuple[str, ...] = setting("ROUTES", default=(), parse=comma_list)
    # Copy.
    copy_dest: str | None = setting("COPY_DEST", default=None, parse=text)
    s3_endpoint_url: str | None = setting("S3_ENDPOINT_URL", default=None, parse=text)
    # CI API and resubmit. No CICB_RETRY_NEVER_CODES (None) means resubmit's own list.
    cos_secret_id: str | None = setting("COS_SECRET_ID", default=None, parse=verbatim, secret=True)
    cos_secret_key: str | None = setting(
        "COS_SECRET_KEY", default=None, parse=verbatim, secret=True
    )
    ci_endpoint: str | None = setting("CI_ENDPOINT", default=None, parse=text)
    retry_max_attempts: int = setting("RETRY_MAX_ATTEMPTS", default=2, parse=integer)
    retry_never_codes: tuple[str, ...] | None = setting(
        "RETRY_NEVER_CODES", default=None, parse=comma_list
    )
    # Reconcile: list CI's finished jobs and route those whose callback never came.
    # CICB_RECONCILE_QUEUES is BUCKET:REGION:QUEUE_ID, comma-separated.
    reconcile_interval_s: int = setting("RECONCILE_INTERVAL_S", default=300, parse=integer)
    reconcile_grace_s: int = setting("RECONCILE_GRACE_S", default=600, parse=integer)
    reconcile_queues: tuple[str, ...] = setting("RECONCILE_QUEUES", default=(), parse=comma_list)
    reconcile_tags: tuple[str, ...] = setting("RECONCILE_TAGS", default=(), parse=comma_list)
    # The buckets whose CI queues cicb looks after (`cicb ci`, reconcile, doctor).
    ci_buckets: tuple[str, ...] = setting("CI_BUCKETS", default=(), parse=comma_list)
    # The receiver's URL as CI reaches it (https://host/callbacks), for `cicb ci connect`.
    public_url: str | None = setting("PUBLIC_URL", default=None, parse=text)
    # Archive: every accepted body, for cicb archive and cicb replay (0 turns it off).
    archive_retention_s: int = setting("ARCHIVE_RETENTION_S", default=3 * 24 * 3600, parse=integer)
    archive_max_entries: int = setting("ARCHIVE_MAX_ENTRIES", default=200_000, parse=integer)
    # Retries of tasks.
    max_retries: int = setting("MAX_RETRIES", default=8, parse=integer)
    retry_backoff_s: int = setting("RETRY_BACKOFF_S", default=2, parse=integer)
    retry_backoff_max_s: int = setting("RETRY_BACKOFF_MAX_S", default=600, parse=integer)
    visibility_timeout_s: int = setting("VISIBILITY_TIMEOUT_S", default=7200, parse=integer)
    # A step runs under a lease (pipeline.runs): its length, and how often it is renewed.
    step_lease_s: float = setting("STEP_LEASE_S", default=30.0, parse=seconds)
    step_lease_renew_s: float = setting("STEP_LEASE_RENEW_S", default=5.0, parse=seconds)
    # Worker. No concurrency (or 0): PROCESSES_PER_CPU per CPU (``worker_processes``).
    prefetch_multiplier: int = setting("PREFETCH_MULTIPLIER", default=8, parse=integer)
    worker_concurrency: int | None = setting("WORKER_CONCURRENCY", default=None, parse=count)
    # Where each worker host serves its /metrics (port 0: nowhere).
    worker_metrics_host: str = setting("WORKER_METRICS_HOST", default=DEFAULT_HOST, parse=text)
    worker_metrics_port: int = setting("WORKER_METRICS_PORT", default=8082, parse=integer)
    # Flower.
    flower_host: str = setting("FLOWER_HOST", default=DEFAULT_HOST, parse=text)
    flower_port: int = setting("FLOWER_PORT", default=5555, parse=integer)
    # Console.
    console_host: str = setting("CONSOLE_HOST", default=DEFAULT_HOST, parse=text)
    console_port: int = setting("CONSOLE_PORT", default=8081, parse=integer)
    console_token: str | None = setting("CONSOLE_TOKEN", default=None, parse=verbatim, secret=True)
    console_scan_limit: int = setting("CONSOLE_SCAN_LIMIT", default=10_000, parse=integer)
    # Embedded broker and data.
    embedded_broker_port: int = setting(
        "EMBEDDED_BROKER_PORT", default=DEFAULT_EMBEDDED_BROKER_PORT, parse=integer
    )
    data_dir: Path = setting("DATA_DIR", default=Path(".cicb"), parse=path)  # noqa: RUF009
    # Logging.
    log_level: str = setting("LOG_LEVEL", default="INFO", parse=upper)
    log_format: str = setting("LOG_FORMAT", default="auto", parse=text)

    def __post_init__(self) -> None:
        if self.visibility_timeout_s <= self.retry_backoff_max_s:
            # A countdown longer than the visibility timeout is delivered again and again.
            raise ConfigError(
                "CICB_VISIBILITY_TIMEOUT_S must be greater than CICB_RETRY_BACKOFF_MAX_S "
                f"({self.visibility_timeout_s} <= {self.retry_backoff_max_s})"
            )
        for cidr in self.allowed_cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ConfigError(f"CICB_ALLOWED_CIDRS: {cidr!r} is not a network") from exc
        self._check_redis_urls()
        if self.queue_type not in ("classic", "quorum"):
            raise ConfigError(f"CICB_QUEUE_TYPE must be classic or quorum: {self.queue_type!r}")
        if self.queue_type == "quorum" and not self.broker_url.lower().startswith("amqp"):
            raise ConfigError("CICB_QUEUE_TYPE=quorum needs a RabbitMQ broker (amqp://)")
        if self.min_replicas < 0 or self.replica_timeout_ms < 1:
            raise ConfigError(
                "CICB_MIN_REPLICAS must be 0 or more and CICB_REPLICA_TIMEOUT_MS at least 1"
            )
        if not 0 < self.step_lease_renew_s < self.step_lease_s:
            raise ConfigError(
                "CICB_STEP_LEASE_RENEW_S must be more than 0 and less than CICB_STEP_LEASE_S "
                f"({self.step_lease_renew_s}, {self.step_lease_s})"
            )
        if self.max_deliveries < 1:
            raise ConfigError("CICB_MAX_DELIVERIES must be at least 1")
        if self.log_format not in ("auto", "json", "console"):
            raise ConfigError(f"CICB_LOG_FORMAT must be auto, json or console: {self.log_format}")
        if self.ci_endpoint is not None:
            _endpoint_parts(self.ci_endpoint)
        for name in ("reconcile_interval_s", "reconcile_grace_s", "archive_retention_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"CICB_{name.upper()} must be 0 or more")
        if self.console_scan_limit < 1:
            raise ConfigError("CICB_CONSOLE_SCAN_LIMIT must be at least 1")
        if self.archive_max_entries < 0:
            raise ConfigError("CICB_ARCHIVE_MAX_ENTRIES must be 0 or more")
        for queue in self.reconcile_queues:
            if len(queue.split(":")) != 3 or not all(queue.split(":")):
                raise ConfigError(f"CICB_RECONCILE_QUEUES: {queue!r} is not BUCKET:REGION:QUEUE_ID")
        _bucket_regions(self.ci_buckets)
        if self.public_url is not None and not _is_http_url(self.public_url):
            raise ConfigError(f"CICB_PUBLIC_URL must be an http(s) URL: {self.public_url!r}")

    def _check_redis_urls(self) -> None:
        """A Redis address that cannot be one stops the process (ConfigError)."""
        urls = {"CICB_REDIS_URL": self.redis_url}
        if self.broker_url.split("://", 1)[0].lower() in REDIS_SCHEMES:
            urls["CICB_BROKER_URL"] = self.broker_url
        for name, url in urls.items():
            if url is not None:
                RedisEndpoint.parse(
                    url,
                    master=self.sentinel_master,
                    sentinel_password=self.sentinel_password,
                    setting=name,
                )

    @property
    def cos_configured(self) -> bool:
        """Whether cicb can call CI's API (``retry_job`` needs it)."""
        return bool(self.cos_secret_id and self.cos_secret_key)

    @property
    def ci_endpoint_parts(self) -> tuple[str, str] | None:
        """``CICB_CI_ENDPOINT`` as ``(netloc, scheme)`` for the COS SDK's ``Domain`` and
        ``Scheme`` (``https`` when none is given), or None to use CI's own endpoint.

        Raises ``ConfigError`` unless it is ``host[:port]`` or ``http(s)://host[:port][/]``.
        """
        return None if self.ci_endpoint is None else _endpoint_parts(self.ci_endpoint)

    @property
    def bucket_regions(self) -> tuple[tuple[str, str], ...]:
        """``CICB_CI_BUCKETS`` as ``(bucket, region)`` pairs, each once."""
        return _bucket_regions(self.ci_buckets)

    @property
    def worker_processes(self) -> int:
        """The worker's pool size: ``CICB_WORKER_CONCURRENCY``, else ``PROCESSES_PER_CPU``
        per CPU. A step mostly waits on the network (Redis, the notify target, COS, CI), so
        one process per CPU, Celery's default, leaves the CPUs idle (``make bench``)."""
        return self.worker_concurrency or PROCESSES_PER_CPU * (os.cpu_count() or 1)

    @property
    def token_file(self) -> Path:
        return self.data_dir / "token"

    @property
    def console_token_file(self) -> Path:
        return self.data_dir / "console-token"

    def effective_console_token(self) -> str | None:
        """The console's token: ``CICB_CONSOLE_TOKEN``, else the one ``cicb up`` kept."""
        if self.console_token:
            return self.console_token
        try:
            return self.console_token_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    @property
    def callback_url(self) -> str:
        """Where ``cicb send`` posts: ``CICB_RECEIVER_URL`` or the local receiver."""
        if self.receiver_url:
            return self.receiver_url
        return f"http://{self.receiver_host}:{self.receiver_port}/callbacks"

    def accepted_tokens(self) -> tuple[str, ...]:
        """Every token the receiver accepts: ``CICB_RECEIVER_TOKEN`` (or the one ``cicb up``
        kept) and ``CICB_RECEIVER_TOKENS``, so a new token can be added before the old one
        is removed from Tencent's callback URL."""
        primary = self.effective_token()
        return tuple(dict.fromkeys(t for t in (primary, *self.receiver_tokens) if t))

    def effective_token(self) -> str | None:
        """The receiver's token: ``CICB_RECEIVER_TOKEN``, else the one ``cicb up`` kept."""
        if self.receiver_token:
            return self.receiver_token
        try:
            return self.token_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def secrets(self) -> tuple[str, ...]:
        """The non-empty values of the secret settings, in declaration order, to redact
        from logs. Not the token file's token nor passwords inside URLs."""
        found: list[str] = []
        for f in fields(self):
            if f.metadata["secret"]:
                value = getattr(self, f.name)
                found.extend(value if isinstance(value, tuple) else [value])
        return tuple(dict.fromkeys(s for s in found if s))

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read every ``CICB_`` variable; raise ``ConfigError`` naming a bad one."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            env = f.metadata["env"]
            raw = environ.get(env)
            value = None if raw is None else f.metadata["parse"](env, raw)
            values[f.name] = f.default if value is None else value
        # The one derived default: the embedded broker's URL follows its port.
        if not values["broker_configured"]:
            values["broker_url"] = _embedded_broker_url(values["embedded_broker_port"])
        return cls(**values)


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    return Settings.from_env(os.environ)
