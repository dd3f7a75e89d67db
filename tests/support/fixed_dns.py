"""A stand-in DNS for tests: every name resolves to fixed addresses (no network, no /etc/hosts edits)."""

from __future__ import annotations

import socket

from aiohttp.abc import AbstractResolver, ResolveResult


class FixedResolver(AbstractResolver):
    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                proto=0,
                flags=0,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
            )
            for address in self.addresses
        ]

    async def close(self) -> None:
        pass
