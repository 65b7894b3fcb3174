"""What ``cicb up`` runs, and the token it keeps."""

from __future__ import annotations

import stat
from pathlib import Path

from pipeline.processes import commands, ensure_console_token, ensure_token
from pipeline.settings import Settings


def test_without_a_broker_url_up_starts_the_embedded_broker_with_persistence(
    tmp_path: Path,
) -> None:
    procs = commands(Settings.from_env({"CICB_DATA_DIR": str(tmp_path)}))
    assert list(procs) == ["broker", "web", "worker", "beat", "flower", "console"]
    broker = procs["broker"]
    assert "valkey-server" in broker
    assert "--appendonly yes" in broker
    assert "--maxmemory-policy noeviction" in broker
    assert "--port 6390" in broker and f"--dir {tmp_path}" in broker
    assert "--bind 127.0.0.1" in broker


def test_with_a_broker_url_up_starts_no_broker() -> None:
    procs = commands(Settings.from_env({"CICB_BROKER_URL": "redis://redis.internal:6379/0"}))
    assert list(procs) == ["web", "worker", "beat", "flower", "console"]
    assert "--port=5555" in procs["flower"] and "--address=127.0.0.1" in procs["flower"]
    assert "-Q ingest,actions" in procs["worker"]
    assert "-A workers.app beat" in procs["beat"]


def test_the_token_is_made_once_kept_private_and_reused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    token = ensure_token(settings)
    assert len(token) >= 32
    path = tmp_path / "data" / "token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_token(settings) == token
    assert ensure_token(Settings(data_dir=tmp_path / "data", receiver_token="given")) == "given"


def test_the_console_token_is_its_own_made_once_kept_private_and_reused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    token = ensure_console_token(settings)
    assert len(token) >= 32
    path = tmp_path / "data" / "console-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_console_token(settings) == token != ensure_token(settings)
    given = Settings(data_dir=tmp_path / "data", console_token="given")
    assert ensure_console_token(given) == "given"
