"""Settings: named defaults, every kind of CICB_ variable, and refusing bad ones by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.settings import Settings


def test_defaults_use_the_embedded_broker_and_a_5_mib_body_limit() -> None:
    for settings in (Settings(), Settings.from_env({})):
        assert settings.broker_url == "redis://127.0.0.1:6390/0"
        assert settings.broker_configured is False
        assert settings.embedded_broker_port == 6390
        assert settings.max_body_bytes == 5 * 1024 * 1024
        assert settings.receiver_token is None
        assert settings.notify_urls == ()
        assert settings.routes_modules == ()
        assert settings.worker_concurrency is None
        assert settings.visibility_timeout_s > settings.retry_backoff_max_s


def test_from_env_ignores_variables_without_the_prefix() -> None:
    settings = Settings.from_env({"BROKER_URL": "redis://elsewhere:1/0", "MAX_BODY_BYTES": "1"})
    assert settings == Settings.from_env({})


def test_from_env_reads_every_kind_of_variable(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "CICB_BROKER_URL": " amqp://guest@rabbit:5672// ",
            "CICB_RECEIVER_HOST": " 0.0.0.0 ",
            "CICB_RECEIVER_PORT": "9090",
            "CICB_RECEIVER_TOKEN": "s3cret",
            "CICB_RECEIVER_URL": "https://cb.example.com/callbacks",
            "CICB_MAX_BODY_BYTES": "2048",
            "CICB_NOTIFY_TIMEOUT_S": "3",
            "CICB_MAX_RETRIES": "3",
            "CICB_RETRY_BACKOFF_S": "5",
            "CICB_RETRY_BACKOFF_MAX_S": "60",
            "CICB_VISIBILITY_TIMEOUT_S": "61",
            "CICB_PREFETCH_MULTIPLIER": "1",
            "CICB_WORKER_CONCURRENCY": "4",
            "CICB_FLOWER_HOST": "0.0.0.0",
            "CICB_FLOWER_PORT": "5556",
            "CICB_DATA_DIR": str(tmp_path),
            "CICB_LOG_LEVEL": "debug",
            "CICB_LOG_FORMAT": "json",
        }
    )
    assert settings.broker_url == "amqp://guest@rabbit:5672//"
    assert settings.broker_configured is True
    assert settings.receiver_host == "0.0.0.0"
    assert settings.receiver_port == 9090
    assert settings.receiver_token == "s3cret"
    assert settings.receiver_url == "https://cb.example.com/callbacks"
    assert settings.max_body_bytes == 2048
    assert settings.notify_timeout_s == 3.0
    assert settings.max_retries == 3
    assert settings.retry_backoff_s == 5
    assert settings.retry_backoff_max_s == 60
    assert settings.visibility_timeout_s == 61
    assert settings.prefetch_multiplier == 1
    assert settings.worker_concurrency == 4
    assert settings.flower_host == "0.0.0.0"
    assert settings.flower_port == 5556
    assert settings.data_dir == tmp_path
    assert settings.token_file == tmp_path / "token"
    assert settings.log_level == "DEBUG"
    assert settings.log_format == "json"


def test_blank_variables_fall_back_to_the_defaults() -> None:
    settings = Settings.from_env(
        {"CICB_RECEIVER_PORT": "  ", "CICB_BROKER_URL": " ", "CICB_LOG_LEVEL": ""}
    )
    assert settings.receiver_port == 8080
    assert settings.broker_url == "redis://127.0.0.1:6390/0"
    assert settings.broker_configured is False
    assert settings.log_level == "INFO"


def test_embedded_broker_port_moves_the_default_broker_url() -> None:
    settings = Settings.from_env({"CICB_EMBEDDED_BROKER_PORT": "7001"})
    assert settings.embedded_broker_port == 7001
    assert settings.broker_url == "redis://127.0.0.1:7001/0"
    assert settings.broker_configured is False


def test_comma_lists_are_trimmed_and_skip_empty_items() -> None:
    settings = Settings.from_env(
        {
            "CICB_NOTIFY_URLS": " http://a.example/hook ,,http://b.example/hook, ",
            "CICB_ROUTES": "myapp.routes,other.routes",
        }
    )
    assert settings.notify_urls == ("http://a.example/hook", "http://b.example/hook")
    assert settings.routes_modules == ("myapp.routes", "other.routes")


@pytest.mark.parametrize(
    "name",
    [
        "RECEIVER_PORT",
        "MAX_BODY_BYTES",
        "MAX_RETRIES",
        "RETRY_BACKOFF_S",
        "RETRY_BACKOFF_MAX_S",
        "VISIBILITY_TIMEOUT_S",
        "PREFETCH_MULTIPLIER",
        "FLOWER_PORT",
        "EMBEDDED_BROKER_PORT",
    ],
)
def test_a_bad_integer_is_a_config_error_naming_the_variable(name: str) -> None:
    with pytest.raises(ConfigError, match=f"CICB_{name}\\b.*'5MB'"):
        Settings.from_env({f"CICB_{name}": "5MB"})


@pytest.mark.parametrize("name", ["NOTIFY_TIMEOUT_S"])
def test_a_bad_number_of_seconds_is_a_config_error_naming_the_variable(name: str) -> None:
    with pytest.raises(ConfigError, match=f"CICB_{name}\\b"):
        Settings.from_env({f"CICB_{name}": "ten"})


def test_a_bad_worker_concurrency_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="CICB_WORKER_CONCURRENCY"):
        Settings.from_env({"CICB_WORKER_CONCURRENCY": "four"})


@pytest.mark.parametrize(("visibility", "backoff_max"), [("600", "600"), ("300", "600")])
def test_visibility_timeout_must_be_above_the_longest_retry_backoff(
    visibility: str, backoff_max: str
) -> None:
    with pytest.raises(ConfigError, match="CICB_VISIBILITY_TIMEOUT_S"):
        Settings.from_env(
            {"CICB_VISIBILITY_TIMEOUT_S": visibility, "CICB_RETRY_BACKOFF_MAX_S": backoff_max}
        )
    with pytest.raises(ConfigError, match="CICB_RETRY_BACKOFF_MAX_S"):
        Settings(visibility_timeout_s=int(visibility), retry_backoff_max_s=int(backoff_max))
    assert Settings(visibility_timeout_s=601, retry_backoff_max_s=600).visibility_timeout_s == 601


def test_an_unknown_log_format_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="CICB_LOG_FORMAT"):
        Settings.from_env({"CICB_LOG_FORMAT": "xml"})


def test_effective_token_prefers_the_environment(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n")
    settings = Settings.from_env(
        {"CICB_RECEIVER_TOKEN": "from-env", "CICB_DATA_DIR": str(tmp_path)}
    )
    assert settings.effective_token() == "from-env"


def test_effective_token_falls_back_to_the_token_file(tmp_path: Path) -> None:
    settings = Settings.from_env({"CICB_DATA_DIR": str(tmp_path)})
    assert settings.effective_token() is None
    settings.token_file.write_text("  from-file\n")
    assert settings.effective_token() == "from-file"
    settings.token_file.write_text("\n")
    assert settings.effective_token() is None


def test_callback_url_is_the_local_receiver_unless_a_url_is_given() -> None:
    assert Settings().callback_url == "http://127.0.0.1:8080/callbacks"
    local = Settings.from_env({"CICB_RECEIVER_HOST": "10.0.0.5", "CICB_RECEIVER_PORT": "9000"})
    assert local.callback_url == "http://10.0.0.5:9000/callbacks"
    public = Settings.from_env(
        {"CICB_RECEIVER_PORT": "9000", "CICB_RECEIVER_URL": "https://cb.example.com/in?token=x"}
    )
    assert public.callback_url == "https://cb.example.com/in?token=x"
