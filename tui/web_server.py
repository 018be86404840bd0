"""``likeness web``'s server: textual-serve, closed to other web pages and, off loopback, to strangers.

textual-serve's ``/ws`` hands whoever opens it a live TUI session (the screen, and the keyboard),
and checks neither ``Origin`` nor ``Host``. So every request here must name this server in ``Host``
(a DNS-rebinding page names its own), a WebSocket must come from this server's own page
(``Origin``), and a server reachable from other machines asks for a key: the page URL it prints
carries it once, and a cookie (HttpOnly, SameSite=Strict, so no other site's page sends it) carries
it from there on.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from engine.service.config import is_loopback
from engine.service.security import LOOPBACK_NAMES, host_name

COOKIE = "likeness_web_key"


def allowed_names(host: str, public_url: str | None) -> frozenset[str]:
    names = set(LOOPBACK_NAMES)
    if host not in ("0.0.0.0", "::", ""):
        names.add(host_name(host))
    if public_url:
        names.add((urlsplit(public_url).hostname or "").lower())
    return frozenset(names - {""})


def needs_key(host: str, public_url: str | None) -> bool:
    """Whether other machines may reach the page: bound beyond loopback, and not published only on a
    loopback address (a container's port on 127.0.0.1, which ``--public-url`` then names)."""
    if is_loopback(host):
        return False
    public = urlsplit(public_url).hostname if public_url else None
    return not (public and is_loopback(public))


def refusal(path: str, headers, query, cookies, names: frozenset[str], key: str | None) -> tuple[str, bool] | None:
    """Why a request is refused (and whether it is a key it lacks), or None when it may pass."""
    host = headers.get("Host", "")
    if host_name(host) not in names:
        return f"Host {host[:80]!r} is not this server's name", False
    origin = headers.get("Origin")
    if path == "/ws" and (origin is None or host_name(origin) not in names):
        return "the TUI session opens only from this server's own page", False
    if key is not None:
        given = query.get("key") or cookies.get(COOKIE) or ""
        if not hmac.compare_digest(given.encode(), key.encode()):
            return "this page needs its key: open the URL `likeness web` printed", True
    return None


def make_server(command: str, host: str, port: int, public_url: str | None, key: str | None = None):
    """A textual-serve Server for ``command`` with the checks above; a key is made when one is needed."""
    from aiohttp import web
    from textual_serve.server import Server

    names = allowed_names(host, public_url)
    if key is None and needs_key(host, public_url):
        key = secrets.token_urlsafe(24)

    @web.middleware
    async def guard(request: web.Request, handler):
        problem = refusal(request.path, request.headers, request.query, request.cookies, names, key)
        if problem is not None:
            reason, missing_key = problem
            raise (web.HTTPUnauthorized if missing_key else web.HTTPForbidden)(text=reason + "\n")
        response = await handler(request)
        if key is not None and request.query.get("key") and isinstance(response, web.Response):
            response.set_cookie(COOKIE, key, httponly=True, samesite="Strict")
        return response

    class GuardedServer(Server):
        async def _make_app(self) -> web.Application:
            app = await super()._make_app()
            app.middlewares.append(guard)
            return app

        async def on_startup(self, app: web.Application) -> None:
            await super().on_startup(app)
            if key is not None:
                self.console.print(f"Open {self.public_url}/?key={key} (the key keeps other machines out)")

    return GuardedServer(command, host=host, port=port, title="likeness", public_url=public_url)
