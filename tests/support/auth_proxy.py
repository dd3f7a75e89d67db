"""An HTTP proxy that makes the local Elasticsearch (security off) answer as a secured one: 401 for a wrong or revoked
API key. Used by the revoked-key test and by ``make chaos``."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from deploy.process import free_port


class AuthProxy:
    """Elasticsearch behind an API key: forwards requests carrying ``ApiKey <API_KEY>``, answers 401 (as a secured
    Elasticsearch does) while the key is revoked."""

    def __init__(self, target: str, api_key: str) -> None:
        self.target = target.rstrip("/")
        self.api_key = api_key
        self.revoked = False
        self.port = free_port()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        product = {"X-Elastic-Product": "Elasticsearch"}
        if self.revoked or request.headers.get("Authorization") != f"ApiKey {self.api_key}":
            error = {"type": "security_exception", "reason": "unable to authenticate with provided credentials"}
            return web.json_response(
                {"error": {"root_cause": [error], **error}, "status": 401},
                status=401,
                headers={**product, "WWW-Authenticate": 'ApiKey realm="security"'},
            )
        assert self._session is not None
        headers = {name: value for name, value in request.headers.items() if name.lower() in ("content-type", "accept")}
        async with self._session.request(
            request.method, self.target + request.path_qs, data=await request.read(), headers=headers
        ) as response:
            body = await response.read()
            kept = {name: value for name, value in response.headers.items() if name.lower() == "content-type"}
            return web.Response(status=response.status, body=body, headers={**kept, **product})

    async def __aenter__(self) -> AuthProxy:
        self._session = aiohttp.ClientSession()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._runner is not None and self._session is not None
        await self._runner.cleanup()
        await self._session.close()
