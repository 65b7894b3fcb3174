"""Tokens, source networks, the proxy header."""

from __future__ import annotations

import pytest

from pipeline.receiver.access import (
    AddressFilter,
    TokenCheck,
    client_address,
    parse_address,
)

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
