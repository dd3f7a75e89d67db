"""A real HTTP server on 127.0.0.1 serving good images and every kind of faulty one, for the fetch tests.

It runs in its own thread and event loop, so tests may block (subprocesses, sleeps) while workers fetch from it.
Routes:
    /img/{name}.png  /img/{name}.jpg  good images (name → a deterministic picture)
    /files/{path}    files under ``files_dir`` (the synthetic dataset's images)
    /slow            answers after ``slow_s`` seconds          → timeout
    /missing         404                                      → http_404
    /error           500                                      → http_5xx
    /html            HTML that claims to be image/png         → not_image
    /truncated.jpg   the first half of a JPEG                 → truncated
    /huge            more bytes than the fetch limit           → too_large  (Content-Length announced)
    /huge-chunked    the same, chunked, no Content-Length     → too_large  (counted while streaming)
    /bomb.png        a small file of ``bomb_side``² pixels      → bomb
    /loop/a ↔ /loop/b                                         → redirect_loop
    /to-private      302 to http://10.255.255.1/x              → ssrf_blocked
    /redirect-ok     302 to /img/redirected.png                → ok
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from PIL import Image, ImageDraw

HUGE_BYTES = 3 * 1024 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def picture(name: str, size: tuple[int, int] = (96, 64)) -> Image.Image:
    """A deterministic RGB picture: a coloured square whose colour and place depend on ``name``."""
    seed = sum(name.encode())
    image = Image.new("RGB", size, "white")
    x, y = seed % (size[0] - 32), (seed * 7) % (size[1] - 32)
    ImageDraw.Draw(image).rectangle((x, y, x + 31, y + 31), fill=((seed * 37) % 256, (seed * 59) % 256, 200))
    return image


def encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _fixed(status: int, body: bytes, content_type: str) -> Handler:
    async def handler(_request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type=content_type)

    return handler


def _redirect(location: str) -> Handler:
    async def handler(_request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": location})

    return handler


class ImageServer:
    def __init__(self, *, slow_s: float = 5.0, bomb_side: int = 3000, files_dir: Path | None = None) -> None:
        self.slow_s = slow_s
        self.bomb_side = bomb_side
        self.files_dir = files_dir
        self.requests: Counter[str] = Counter()  # path → number of requests received
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="image-server")
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._bomb = encoded(Image.new("L", (bomb_side, bomb_side)), "PNG", optimize=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def __enter__(self) -> ImageServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *_exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _start(self) -> None:
        app = web.Application(middlewares=[self._count])
        app.add_routes(
            [
                web.get("/img/{name}.png", self._png),
                web.get("/img/{name}.jpg", self._jpg),
                web.get("/files/{path:.+}", self._file),
                web.get("/slow", self._slow),
                web.get("/missing", _fixed(404, b"no such image", "text/plain")),
                web.get("/error", _fixed(500, b"boom", "text/plain")),
                web.get("/html", _fixed(200, b"<html>hello</html>", "image/png")),  # the header lies
                web.get("/truncated.jpg", self._truncated),
                web.get("/huge", _fixed(200, b"\0" * HUGE_BYTES, "image/png")),
                web.get("/huge-chunked", self._huge_chunked),
                web.get("/bomb.png", _fixed(200, self._bomb, "image/png")),
                web.get("/loop/a", _redirect("/loop/b")),
                web.get("/loop/b", _redirect("/loop/a")),
                web.get("/to-private", _redirect("http://10.255.255.1/x")),
                web.get("/redirect-ok", _redirect("/img/redirected.png")),
            ]
        )
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    @web.middleware
    async def _count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requests[request.path] += 1
        response = await handler(request)
        # Label Studio's page loads images cross-origin (it reads their pixels), as image CDNs allow.
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    async def _png(self, request: web.Request) -> web.Response:
        return web.Response(body=encoded(picture(request.match_info["name"]), "PNG"), content_type="image/png")

    async def _jpg(self, request: web.Request) -> web.Response:
        return web.Response(body=encoded(picture(request.match_info["name"]), "JPEG"), content_type="image/jpeg")

    async def _file(self, request: web.Request) -> web.StreamResponse:
        if self.files_dir is None:
            raise web.HTTPNotFound()
        path = (self.files_dir / request.match_info["path"]).resolve()
        if not path.is_relative_to(self.files_dir.resolve()) or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    async def _slow(self, _request: web.Request) -> web.Response:
        await asyncio.sleep(self.slow_s)
        return web.Response(body=encoded(picture("slow"), "PNG"), content_type="image/png")

    async def _truncated(self, _request: web.Request) -> web.Response:
        whole = encoded(picture("truncated", (640, 480)), "JPEG", quality=95)
        return web.Response(body=whole[: len(whole) // 2], content_type="image/jpeg")

    async def _huge_chunked(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b"\0" * 65536
        for _ in range(HUGE_BYTES // len(chunk)):
            await response.write(chunk)
        await response.write_eof()
        return response
