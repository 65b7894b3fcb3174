"""Settings declared once: every field names its variable, the CI endpoint is checked where
it is read, and the secret settings are known by their declaration."""

from __future__ import annotations

import dataclasses
import os

import pytest

from pipeline.errors import ConfigError
from pipeline.settings import Settings

FIELDS = dataclasses.fields(Settings)


# What a field's value above needs beside it to be valid.
NEEDS = {"queue_type": {"CICB_BROKER_URL": "amqp://guest@h//"}}


@pytest.mark.parametrize("f", FIELDS, ids=[f.name for f in FIELDS])
def test_every_field_declares_its_variable_parser_and_secrecy(f: dataclasses.Field[object]) -> None:
    assert f.metadata["env"].startswith("CICB_")
    assert callable(f.metadata["parse"])
    assert f.repr is not f.metadata["secret"]
    assert f.default is not dataclasses.MISSING


def test_the_variables_are_the_documented_ones() -> None:
    variables = {f.metadata["env"] for f in FIELDS}
    # broker_configured is read from CICB_BROKER_URL too: every other field has its own.
    assert len(variables) == len(FIELDS) - 1
    assert {"CICB_ROUTES", "CICB_BROKER_URL", "CICB_CI_ENDPOINT"} <= variables


def test_only_the_secrets_are_marked_secret() -> None:
    secret = {f.name for f in FIELDS if f.metadata["secret"]}
    assert secret == {
        "receiver_token",
        "receiver_tokens",
        "notify_secret",
        "cos_secret_id",
        "cos_secret_key",
        "console_token",
        "sentinel_password",
    }


# A value of each field's type that passes validation and differs from every default.
SAMPLES = {"int": "9999", "float": "9.5", "bool": "x", "Path": "elsewhere", "str": "v"}
VALID = {
    "log_format": "json",
    "allowed_cidrs": "10.0.0.0/8",
    "retry_backoff_max_s": "60",
    "reconcile_queues": "bucket-1250000000:ap-chongqing:p1",
    "redis_url": "redis://elsewhere:6379/1",
    "queue_type": "quorum",
    "step_lease_renew_s": "9.5",
    "step_lease_s": "99",
    "ci_buckets": "media-1250000000:ap-guangzhou",
    "public_url": "https://cb.example.com/callbacks",
}


@pytest.mark.parametrize("f", FIELDS, ids=[f.name for f in FIELDS])
def test_the_one_loop_reads_every_declared_variable(f: dataclasses.Field[object]) -> None:
    kind = str(f.type).removesuffix(" | None")
    raw = VALID.get(f.name, "a,b" if kind.startswith("tuple") else SAMPLES[kind])
    settings = Settings.from_env({**NEEDS.get(f.name, {}), f.metadata["env"]: raw})
    assert getattr(settings, f.name) != f.default


def test_secrets_lists_the_non_empty_secret_values_and_repr_hides_them() -> None:
    settings = Settings.from_env(
        {
            "CICB_RECEIVER_TOKEN": "tok-1",
            "CICB_RECEIVER_TOKENS": "tok-2, tok-1,",
            "CICB_NOTIFY_SECRET": "whsec_abc",
            "CICB_COS_SECRET_ID": "AKID",
            "CICB_COS_SECRET_KEY": "",
            "CICB_BROKER_URL": "redis://h:1/0",
        }
    )
    assert settings.secrets() == ("tok-1", "tok-2", "whsec_abc", "AKID")
    assert not any(secret in repr(settings) for secret in settings.secrets())
    assert Settings().secrets() == ()


@pytest.mark.parametrize(
    ("endpoint", "parts"),
    [
        ("127.0.0.1:9000", ("127.0.0.1:9000", "https")),
        ("localhost:9000", ("localhost:9000", "https")),
        ("ci.example.com", ("ci.example.com", "https")),
        ("http://127.0.0.1:9000", ("127.0.0.1:9000", "http")),
        ("https://ci.example.com", ("ci.example.com", "https")),
        ("HTTPS://ci.example.com:8443/", ("ci.example.com:8443", "https")),
        ("http://[::1]:9000", ("[::1]:9000", "http")),
        (" http://h:1 ", ("h:1", "http")),
    ],
)
def test_ci_endpoint_takes_host_port_or_a_url(endpoint: str, parts: tuple[str, str]) -> None:
    assert Settings.from_env({"CICB_CI_ENDPOINT": endpoint}).ci_endpoint_parts == parts


@pytest.mark.parametrize(
    "endpoint",
    [
        "ftp://x",
        "http://",
        "not a url with spaces",
        "http://h:1/path",
        "http://h:1?q=1",
        "http://user@h:1",
        "h:port",
        "://h",
    ],
)
def test_a_bad_ci_endpoint_is_a_config_error_naming_the_variable(endpoint: str) -> None:
    with pytest.raises(ConfigError, match="CICB_CI_ENDPOINT"):
        Settings.from_env({"CICB_CI_ENDPOINT": endpoint})
    with pytest.raises(ConfigError, match="CICB_CI_ENDPOINT"):
        Settings(ci_endpoint=endpoint)


def test_no_ci_endpoint_means_cis_own() -> None:
    assert Settings.from_env({"CICB_CI_ENDPOINT": "  "}).ci_endpoint_parts is None
    assert Settings().ci_endpoint_parts is None


def test_retry_never_codes_tells_absent_from_empty() -> None:
    assert Settings.from_env({}).retry_never_codes is None
    assert Settings.from_env({"CICB_RETRY_NEVER_CODES": ""}).retry_never_codes == ()
    codes = Settings.from_env({"CICB_RETRY_NEVER_CODES": "A, B.c"}).retry_never_codes
    assert codes == ("A", "B.c")


def test_a_zero_or_blank_worker_concurrency_is_two_processes_per_cpu() -> None:
    for raw in ("0", " ", ""):
        settings = Settings.from_env({"CICB_WORKER_CONCURRENCY": raw})
        assert settings.worker_concurrency is None
        assert settings.worker_processes == 2 * (os.cpu_count() or 1)
    assert Settings.from_env({"CICB_WORKER_CONCURRENCY": "3"}).worker_processes == 3


def test_secrets_are_not_trimmed_but_other_text_is() -> None:
    settings = Settings.from_env({"CICB_RECEIVER_TOKEN": " t ", "CICB_REDIS_URL": " redis://r/1 "})
    assert settings.receiver_token == " t "
    assert settings.redis_url == "redis://r/1"
    assert Settings.from_env({}).redis_url is None


def test_a_bad_number_of_seconds_quotes_the_value() -> None:
    with pytest.raises(ConfigError, match=r"CICB_BODY_TIMEOUT_S must be a number of seconds: 'x'"):
        Settings.from_env({"CICB_BODY_TIMEOUT_S": " x "})
    with pytest.raises(ConfigError, match=r"CICB_DEDUP_TTL_S must be an integer: 'abc'"):
        Settings.from_env({"CICB_DEDUP_TTL_S": "abc"})
