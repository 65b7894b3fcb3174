"""Tokens, source networks, the proxy header, the refusal-log throttle and redaction."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pipeline.receiver.access import (
    AddressFilter,
    Admission,
    LogThrottle,
    ThrottleFilter,
    TokenCheck,
    client_address,
    parse_address,
    secret_redactor,
    secrets_of,
)
from pipeline.settings import Settings

# -- tokens ---------------------------------------------------------------------------------


def test_every_accepted_token_is_accepted() -> None:
    check = TokenCheck(["old-token", "new-token", "令牌"])
    assert check("old-token")
    assert check("new-token")
    assert check("令牌")


@pytest.mark.parametrize("given", ["", "old", "old-token ", "OLD-TOKEN", "old-tokenn", "\x00"])
def test_anything_else_is_refused(given: str) -> None:
    assert not TokenCheck(["old-token", "new-token"])(given)


def test_a_token_check_needs_a_token() -> None:
    with pytest.raises(ValueError):
        TokenCheck(["", ""])


def test_every_token_is_compared_whichever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: the time taken does not tell which token (if any) matched."""
    import pipeline.receiver.access as access

    calls: list[int] = []
    real = access.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", counting)
    check = TokenCheck(["a", "b", "c"])
    for given in ("a", "b", "c", "nope"):
        calls.clear()
        check(given)
        assert len(calls) == 3


# -- addresses ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("203.0.113.7", "203.0.113.7"),
        (" 203.0.113.7 ", "203.0.113.7"),
        ("203.0.113.7:5555", "203.0.113.7"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ('"[2001:DB8::1]"', "2001:db8::1"),
        ("unknown", None),
        ("", None),
        ("203.0.113.300", None),
        ("<script>", None),
    ],
)
def test_parse_address(value: str, address: str | None) -> None:
    assert parse_address(value) == address


def test_without_a_proxy_header_the_peer_is_the_client() -> None:
    assert client_address("10.0.0.1", ["203.0.113.7"], proxy_header=None) == "10.0.0.1"


def test_x_forwarded_for_gives_its_last_entry() -> None:
    """The entry the trusted proxy appended; the ones before it are the client's to forge."""
    values = ["198.51.100.1, 192.0.2.9", "203.0.113.7"]
    got = client_address("10.0.0.1", values, proxy_header="X-Forwarded-For")
    assert got == "203.0.113.7"
    one = client_address("10.0.0.1", ["6.6.6.6, 203.0.113.7"], proxy_header="X-Forwarded-For")
    assert one == "203.0.113.7"


def test_x_real_ip_gives_its_value() -> None:
    assert client_address("10.0.0.1", ["203.0.113.7"], proxy_header="X-Real-IP") == "203.0.113.7"


def test_forwarded_gives_the_for_of_its_last_element() -> None:
    values = ['for=6.6.6.6;proto=http, for="[2001:db8::7]:80";proto=https;by=10.0.0.1']
    assert client_address("10.0.0.1", values, proxy_header="Forwarded") == "2001:db8::7"


@pytest.mark.parametrize("values", [[], ["unknown"], ["203.0.113.7, garbage"], [""]])
def test_an_absent_or_unparsable_header_falls_back_to_the_peer(values: list[str]) -> None:
    assert client_address("10.0.0.1", values, proxy_header="X-Forwarded-For") == "10.0.0.1"


def test_no_networks_allow_everyone() -> None:
    allowed = AddressFilter(())
    assert not allowed.active
    assert allowed.allows("203.0.113.7")
    assert allowed.allows(None)


def test_networks_allow_only_their_addresses() -> None:
    allowed = AddressFilter(["10.0.0.0/8", "2001:db8::/32", "192.0.2.5"])
    assert allowed.active
    assert allowed.allows("10.200.3.4")
    assert allowed.allows("2001:db8::1")
    assert allowed.allows("192.0.2.5")
    assert allowed.allows("::ffff:10.1.1.1")  # an IPv4 peer on a dual-stack socket
    assert not allowed.allows("192.0.2.6")
    assert not allowed.allows("11.0.0.1")
    assert not allowed.allows("2001:db9::1")
    assert not allowed.allows(None)
    assert not allowed.allows("testclient")


# -- the log throttle -----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_throttle_logs_a_burst_then_counts_then_summarizes() -> None:
    clock = Clock()
    throttle = LogThrottle(burst=3, window_s=60, clock=clock)
    first = [throttle.admit() for _ in range(3)]
    assert first == [Admission(log=True, suppressed=0)] * 3
    flood = [throttle.admit() for _ in range(1000)]
    assert all(not a.log for a in flood)

    clock.now += 59.9
    assert throttle.admit() == Admission(log=False, suppressed=0)
    clock.now += 0.1
    # The next window: the first line comes with the count of what was left out.
    assert throttle.admit() == Admission(log=True, suppressed=1001)
    assert throttle.admit() == Admission(log=True, suppressed=0)


def test_the_throttle_bounds_lines_per_window_whatever_the_rate() -> None:
    clock = Clock()
    throttle = LogThrottle(burst=10, window_s=60, clock=clock)
    lines_per_window: dict[int, int] = {}
    for i in range(60_000):  # 100 refusals a second for 10 minutes
        clock.now = 1000.0 + i / 100
        admission = throttle.admit()
        lines = int(admission.log) + int(admission.suppressed > 0)
        window = int((clock.now - 1000.0) // 60)
        lines_per_window[window] = lines_per_window.get(window, 0) + lines
    assert max(lines_per_window.values()) <= 11
    assert sum(lines_per_window.values()) <= 10 * 11


def test_a_quiet_source_is_always_logged() -> None:
    clock = Clock()
    throttle = LogThrottle(burst=2, window_s=10, clock=clock)
    for _ in range(20):
        assert throttle.admit() == Admission(log=True, suppressed=0)
        clock.now += 6


def test_the_throttle_wants_sane_limits() -> None:
    with pytest.raises(ValueError):
        LogThrottle(burst=0)
    with pytest.raises(ValueError):
        LogThrottle(window_s=0)


# -- secrets --------------------------------------------------------------------------------


def test_every_secret_is_found_and_redacted(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        receiver_token="tok-primary",
        receiver_tokens=("tok-next",),
        broker_url="redis://:broker-pass@127.0.0.1:6379/0",
        redis_url="redis://user:redis-pass@127.0.0.1:6379/1",
        notify_secret="whsec_abc",
        cos_secret_id="AKIDxyz",
        cos_secret_key="cos-key",
    )
    assert set(secrets_of(settings)) == {
        "tok-primary",
        "tok-next",
        "broker-pass",
        "redis-pass",
        "whsec_abc",
        "AKIDxyz",
        "cos-key",
    }
    redact = secret_redactor(settings)
    text = "Error connecting to redis://:broker-pass@127.0.0.1 with tok-primary and cos-key"
    assert redact(text) == "Error connecting to redis://:***@127.0.0.1 with *** and ***"


def test_the_token_cicb_up_kept_is_a_secret(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("kept-token\n")
    assert secrets_of(Settings(data_dir=tmp_path)) == ("kept-token",)


def test_the_throttle_filter_passes_other_lines_and_throttles_its_own() -> None:
    clock = Clock()
    throttled = ThrottleFilter("Invalid HTTP", LogThrottle(burst=2, window_s=60, clock=clock))

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.WARNING, "", 0, msg, None, None)

    garbage = [record("Invalid HTTP request received.") for _ in range(5)]
    assert [throttled.filter(r) for r in garbage] == [True, True, False, False, False]
    assert all(throttled.filter(record("Started server process")) for _ in range(5))
    clock.now += 60
    later = record("Invalid HTTP request received.")
    assert throttled.filter(later)
    assert later.getMessage() == "Invalid HTTP request received. (3 more suppressed before this)"
