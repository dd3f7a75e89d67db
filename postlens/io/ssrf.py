"""Which addresses an image fetch may connect to — the SSRF guard.

Post authors choose the image URLs, so a URL must not make the worker talk to its own machine, the private network
or cloud metadata endpoints. The check runs on the *resolved* addresses, inside the resolver that aiohttp connects
with: the connection goes to exactly the addresses that were checked, so a DNS answer that changes between check and
connect (DNS rebinding) cannot slip through. IP literals never reach a resolver and are checked by
:meth:`AddressPolicy.check_host` before each hop.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES = ("http", "https")
# NAT64 (RFC 6052) carries an IPv4 address in its low 32 bits, like IPv4-mapped addresses do.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class BlockedAddress(OSError):
    """The URL's host is, or resolves only to, addresses the worker must not connect to."""


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address tunnels to (IPv4-mapped, 6to4, Teredo, NAT64)."""
    embedded: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        embedded.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        embedded.append(address.sixtofour)
    if address.teredo is not None:
        embedded.extend(address.teredo)  # (server, client)
    if address in _NAT64:
        embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return embedded


def refusal_reason(address: IPAddress) -> str | None:
    """Why ``address`` must not be fetched from, or None when it is a public unicast address."""
    for inner in _embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else []:
        reason = refusal_reason(inner)
        if reason is not None:
            return f"{address} embeds {inner}, {reason}"
    v6 = address if isinstance(address, ipaddress.IPv6Address) else None
    checks = (
        # Never a genuine DNS answer; connecting to one reaches the embedded IPv4 address.
        ("IPv4-mapped", v6 is not None and v6.ipv4_mapped is not None),
        # Deprecated transition tunnels, refused whatever they embed (Python versions disagree on whether 6to4 is
        # "global"; the decision should not depend on the interpreter's patch level).
        ("a 6to4 tunnel address", v6 is not None and v6.sixtofour is not None),
        ("a Teredo tunnel address", v6 is not None and v6.teredo is not None),
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        # Shared (CGNAT) space and the rest that is neither private nor routable on the internet.
        ("not globally routable", not address.is_global),
    )
    for name, matches in checks:
        if matches:
            return f"{address} is {name}"
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """Refuses non-public addresses unless a host name or CIDR is on the allowlist."""

    allowed_hosts: frozenset[str]
    allowed_networks: tuple[IPNetwork, ...]

    @classmethod
    def from_allowlist(cls, entries: list[str]) -> AddressPolicy:
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                hosts.add(entry.strip().lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def host_allowlisted(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.allowed_hosts

    def check_address(self, host: str, address: IPAddress) -> None:
        """Raise :class:`BlockedAddress` unless ``host`` may be reached at ``address``."""
        if self.host_allowlisted(host) or any(address in net for net in self.allowed_networks):
            return
        reason = refusal_reason(address)
        if reason is not None:
            raise BlockedAddress(f"refusing {host}: {reason}")

    def check_url(self, url: str) -> None:
        """Check what can be checked before any DNS lookup: the scheme, and the host when it is an IP literal."""
        parts = urlsplit(url)
        if parts.scheme.lower() not in ALLOWED_SCHEMES:
            raise BlockedAddress(f"refusing scheme {parts.scheme!r}; only http and https are fetched")
        host = parts.hostname
        if not host:
            raise BlockedAddress(f"no host in {url!r}")
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            return  # a name: the resolver checks what it resolves to
        self.check_address(host, literal)


class GuardedResolver(AbstractResolver):
    """Resolves with ``inner`` and returns only the addresses the policy allows (all refused → BlockedAddress)."""

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner or ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        allowed: list[ResolveResult] = []
        refusals: list[str] = []
        for result in await self._inner.resolve(host, port, family):
            try:
                self._policy.check_address(host, ipaddress.ip_address(result["host"]))
            except BlockedAddress as blocked:
                refusals.append(str(blocked))
            else:
                allowed.append(result)
        if not allowed:
            raise BlockedAddress("; ".join(refusals) or f"{host} resolved to no address")
        return allowed

    async def close(self) -> None:
        await self._inner.close()
