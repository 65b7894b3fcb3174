"""Who may post a callback: tokens, source networks, the proxy header.

Pure functions and one small class, so the receiver stays a list of checks and each check
is tested on its own.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Sequence

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class TokenCheck:
    """Whether a given token is one of the accepted ones, in constant time.

    Every accepted token is compared, whatever matched before, and the comparison is of
    SHA-256 digests so neither the position of a match nor the tokens' lengths show in the
    time taken.
    """

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = tuple(_digest(t) for t in tokens if t)
        if not self._digests:
            raise ValueError("TokenCheck needs at least one token")

    def __call__(self, given: str) -> bool:
        given_digest = _digest(given)
        matched = False
        for expected in self._digests:
            # `|` rather than `or`: no early exit that would tell which token matched.
            matched |= hmac.compare_digest(given_digest, expected)
        return matched and bool(given)


def parse_address(value: str) -> str | None:
    """An IP address in normal form from ``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80`` or
    ``::1``; ``None`` when ``value`` is none of those."""
    text = value.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # IPv4 with a port; a bare IPv6 address has several colons
        text = text.partition(":")[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _forwarded_for(value: str) -> str:
    """The ``for=`` parameter of the last element of an RFC 7239 ``Forwarded`` header."""
    last = value.split(",")[-1]
    for pair in last.split(";"):
        name, _, param = pair.strip().partition("=")
        if name.lower() == "for":
            return param
    return ""


def client_address(
    peer: str | None, header_values: Sequence[str], *, proxy_header: str | None
) -> str | None:
    """The address a callback came from.

    Without ``proxy_header`` it is the socket peer. With it (``X-Forwarded-For``,
    ``X-Real-IP``, ``Forwarded``...) it is what the proxy wrote in that header, given as
    ``header_values`` (every line of it, in order), falling back to the peer when the header
    is absent or unparsable.

    Of a list (``X-Forwarded-For: client, proxy1, proxy2``) the LAST entry is taken: it is
    the one the proxy in front of cicb appended, the address it saw. Every entry before it
    came with the request and a client can write anything there, so trusting the first
    entry would let anyone pass ``CICB_ALLOWED_CIDRS`` by sending the header themselves.
    This assumes exactly one trusted proxy in front of the receiver, appending (nginx's
    ``$proxy_add_x_forwarded_for``) or overwriting (``X-Real-IP $remote_addr``).
    """
    if not proxy_header or not header_values:
        return peer
    joined = ",".join(header_values)
    forwarded = proxy_header.lower() == "forwarded"
    entry = _forwarded_for(joined) if forwarded else joined.split(",")[-1]
    return parse_address(entry) or peer


class AddressFilter:
    """Whether an address is inside one of the allowed networks (all are, when none)."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        self._networks: tuple[IpNetwork, ...] = tuple(
            ipaddress.ip_network(c, strict=False) for c in cidrs
        )

    @property
    def active(self) -> bool:
        return bool(self._networks)

    def allows(self, address: str | None) -> bool:
        if not self._networks:
            return True
        if address is None:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        # An IPv4 peer on a dual-stack socket shows as ::ffff:a.b.c.d.
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == n.version and ip in n for n in self._networks)
