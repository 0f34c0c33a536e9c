"""The demo site: its own auth endpoint and a page, so a newcomer sees a push arrive.

Any non-empty token is a user: token ``alice`` gets the rooms ``user_alice`` and ``staff``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from aiohttp import web

from ..sites import SiteConfig
from .config import Config

DEMO_SITE = "demo"
DEMO_API_KEY = "demo-key"
PAGE = Path(__file__).parent / "static" / "demo.html"
# The official client 4.8.4, shipped in the package with its license: the demo works offline.
CLIENT_JS = Path(__file__).parent / "static" / "socket.io-4.min.js"


def add_demo_site(config: Config) -> Config:
    site = SiteConfig(
        name=DEMO_SITE,
        auth_url=f"http://127.0.0.1:{config.port}/demo/auth",
        api_key=DEMO_API_KEY,
        auth_scheme="Bearer",
        user_room_prefix="user_",
        public_channel="browse",
    )
    return dataclasses.replace(config, sites={**config.sites, DEMO_SITE: site})


async def demo_auth(request: web.Request) -> web.Response:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme != "Bearer":
        return web.json_response({"error": "bad scheme"}, status=401)
    if not token:
        return web.json_response(["browse"])  # anonymous visitors hold the public channel
    return web.json_response([f"user_{token}", "staff"])


async def demo_page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE.read_text(encoding="utf-8"), content_type="text/html")


async def client_js(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(CLIENT_JS, headers={"Content-Type": "application/javascript"})


async def home(request: web.Request) -> web.Response:
    raise web.HTTPFound("/demo")


def install_demo_routes(app: web.Application) -> None:
    app.router.add_get("/demo/auth", demo_auth)
    app.router.add_get("/demo", demo_page)
    app.router.add_get("/demo/socket.io.min.js", client_js)
    app.router.add_get("/", home)
