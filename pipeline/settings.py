"""Every ``CICB_`` setting, read from the environment once.

``get_settings()`` is the only reader of ``os.environ`` in cicb; everything else takes a
``Settings``. Units are in the names (``_s`` seconds, ``_bytes`` bytes).
"""

from __future__ import annotations

import functools
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import ConfigError

DEFAULT_MAX_BODY_BYTES = 5 * 1024 * 1024
DEFAULT_RECEIVER_PORT = 8080
DEFAULT_FLOWER_PORT = 5555
DEFAULT_EMBEDDED_BROKER_PORT = 6390
DEFAULT_NOTIFY_TIMEOUT_S = 10.0
DEFAULT_MAX_RETRIES = 8
DEFAULT_RETRY_BACKOFF_S = 2
DEFAULT_RETRY_BACKOFF_MAX_S = 600
DEFAULT_VISIBILITY_TIMEOUT_S = 7200
DEFAULT_PREFETCH_MULTIPLIER = 8
DEFAULT_RETRY_MAX_ATTEMPTS = 2
DEFAULT_BODY_TIMEOUT_S = 10.0
DEFAULT_DEDUP_TTL_S = 7 * 24 * 3600
DEFAULT_MAX_DELIVERIES = 3


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """cicb's configuration. Build it with ``from_env``; tests build it directly."""

    broker_url: str = f"redis://127.0.0.1:{DEFAULT_EMBEDDED_BROKER_PORT}/0"
    broker_configured: bool = False
    redis_url: str | None = None
    receiver_host: str = "127.0.0.1"
    receiver_port: int = DEFAULT_RECEIVER_PORT
    receiver_token: str | None = field(default=None, repr=False)
    receiver_tokens: tuple[str, ...] = field(default=(), repr=False)
    receiver_url: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    allowed_cidrs: tuple[str, ...] = ()
    proxy_header: str | None = None
    dedup_ttl_s: int = DEFAULT_DEDUP_TTL_S
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    notify_urls: tuple[str, ...] = ()
    notify_timeout_s: float = DEFAULT_NOTIFY_TIMEOUT_S
    notify_secret: str | None = field(default=None, repr=False)
    routes_modules: tuple[str, ...] = ()
    copy_dest: str | None = None
    s3_endpoint_url: str | None = None
    cos_secret_id: str | None = field(default=None, repr=False)
    cos_secret_key: str | None = field(default=None, repr=False)
    ci_endpoint: str | None = None
    retry_max_attempts: int = DEFAULT_RETRY_MAX_ATTEMPTS
    retry_never_codes: tuple[str, ...] | None = None
    max_retries: int = DEFAULT_MAX_RETRIES
    retry_backoff_s: int = DEFAULT_RETRY_BACKOFF_S
    retry_backoff_max_s: int = DEFAULT_RETRY_BACKOFF_MAX_S
    visibility_timeout_s: int = DEFAULT_VISIBILITY_TIMEOUT_S
    prefetch_multiplier: int = DEFAULT_PREFETCH_MULTIPLIER
    worker_concurrency: int | None = None
    flower_host: str = "127.0.0.1"
    flower_port: int = DEFAULT_FLOWER_PORT
    embedded_broker_port: int = DEFAULT_EMBEDDED_BROKER_PORT
    data_dir: Path = Path(".cicb")
    log_level: str = "INFO"
    log_format: str = "auto"

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
        if self.max_deliveries < 1:
            raise ConfigError("CICB_MAX_DELIVERIES must be at least 1")
        if self.log_format not in ("auto", "json", "console"):
            raise ConfigError(f"CICB_LOG_FORMAT must be auto, json or console: {self.log_format}")

    @property
    def broker_is_redis(self) -> bool:
        return _is_redis(self.broker_url)

    @property
    def cos_configured(self) -> bool:
        """Whether cicb can call CI's API (``retry_job`` needs it)."""
        return bool(self.cos_secret_id and self.cos_secret_key)

    @property
    def token_file(self) -> Path:
        return self.data_dir / "token"

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

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read every ``CICB_`` variable; raise ``ConfigError`` naming a bad one."""

        def text(name: str, default: str) -> str:
            return environ.get(f"CICB_{name}", "").strip() or default

        def number(name: str, default: int) -> int:
            raw = text(name, str(default))
            try:
                return int(raw)
            except ValueError as exc:
                raise ConfigError(f"CICB_{name} must be an integer: {raw!r}") from exc

        def seconds(name: str, default: float) -> float:
            raw = text(name, str(default))
            try:
                return float(raw)
            except ValueError as exc:
                raise ConfigError(f"CICB_{name} must be a number of seconds: {raw!r}") from exc

        broker = environ.get("CICB_BROKER_URL", "").strip()
        embedded_port = number("EMBEDDED_BROKER_PORT", DEFAULT_EMBEDDED_BROKER_PORT)
        broker_url = broker or f"redis://127.0.0.1:{embedded_port}/0"
        redis_default = broker_url if _is_redis(broker_url) else None
        return cls(
            # Without a broker URL, cicb talks to the embedded broker that `cicb up` starts.
            broker_url=broker_url,
            redis_url=environ.get("CICB_REDIS_URL", "").strip() or redis_default,
            broker_configured=bool(broker),
            receiver_host=text("RECEIVER_HOST", "127.0.0.1"),
            receiver_port=number("RECEIVER_PORT", DEFAULT_RECEIVER_PORT),
            receiver_token=environ.get("CICB_RECEIVER_TOKEN") or None,
            receiver_tokens=_split(environ.get("CICB_RECEIVER_TOKENS", "")),
            receiver_url=environ.get("CICB_RECEIVER_URL") or None,
            max_body_bytes=number("MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
            body_timeout_s=seconds("BODY_TIMEOUT_S", DEFAULT_BODY_TIMEOUT_S),
            allowed_cidrs=_split(environ.get("CICB_ALLOWED_CIDRS", "")),
            proxy_header=environ.get("CICB_PROXY_HEADER", "").strip() or None,
            dedup_ttl_s=number("DEDUP_TTL_S", DEFAULT_DEDUP_TTL_S),
            max_deliveries=number("MAX_DELIVERIES", DEFAULT_MAX_DELIVERIES),
            notify_urls=_split(environ.get("CICB_NOTIFY_URLS", "")),
            notify_timeout_s=seconds("NOTIFY_TIMEOUT_S", DEFAULT_NOTIFY_TIMEOUT_S),
            notify_secret=environ.get("CICB_NOTIFY_SECRET") or None,
            routes_modules=_split(environ.get("CICB_ROUTES", "")),
            copy_dest=environ.get("CICB_COPY_DEST", "").strip() or None,
            s3_endpoint_url=environ.get("CICB_S3_ENDPOINT_URL", "").strip() or None,
            cos_secret_id=environ.get("CICB_COS_SECRET_ID") or None,
            cos_secret_key=environ.get("CICB_COS_SECRET_KEY") or None,
            ci_endpoint=environ.get("CICB_CI_ENDPOINT", "").strip() or None,
            retry_max_attempts=number("RETRY_MAX_ATTEMPTS", DEFAULT_RETRY_MAX_ATTEMPTS),
            retry_never_codes=(
                _split(environ["CICB_RETRY_NEVER_CODES"])
                if "CICB_RETRY_NEVER_CODES" in environ
                else None
            ),
            max_retries=number("MAX_RETRIES", DEFAULT_MAX_RETRIES),
            retry_backoff_s=number("RETRY_BACKOFF_S", DEFAULT_RETRY_BACKOFF_S),
            retry_backoff_max_s=number("RETRY_BACKOFF_MAX_S", DEFAULT_RETRY_BACKOFF_MAX_S),
            visibility_timeout_s=number("VISIBILITY_TIMEOUT_S", DEFAULT_VISIBILITY_TIMEOUT_S),
            prefetch_multiplier=number("PREFETCH_MULTIPLIER", DEFAULT_PREFETCH_MULTIPLIER),
            worker_concurrency=number("WORKER_CONCURRENCY", 0) or None,
            flower_host=text("FLOWER_HOST", "127.0.0.1"),
            flower_port=number("FLOWER_PORT", DEFAULT_FLOWER_PORT),
            embedded_broker_port=embedded_port,
            data_dir=Path(text("DATA_DIR", ".cicb")),
            log_level=text("LOG_LEVEL", "INFO").upper(),
            log_format=text("LOG_FORMAT", "auto"),
        )


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    return Settings.from_env(os.environ)


def _is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://"))
