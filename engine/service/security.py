"""Who may talk to the service, how much they may send, and which paths they may reach.

The token check, the Host and Origin checks and the body limit are plain ASGI middleware so they
also cover event streams and requests that never reach a route (404s, bad JSON): no request is
served before all pass.

A service without a token listens on loopback only, but the user's browser is on loopback too:
a web page may send it requests. Two attacks are shut out here. DNS rebinding (a page's own name
made to resolve to 127.0.0.1, so its scripts read the answers) carries the page's name in `Host`:
without a token only the service's own names are served. A cross-site "simple" request (a form
post, or `fetch(..., {mode: "no-cors"})`) carries the page's `Origin`, and may use only the form
content types and no custom header: a state-changing request from a foreign Origin is refused,
and one with a form content type needs the token or the `X-Likeness-Client` header, which no
page can send to another site without the service's consent (and this one never gives it: no CORS).
"""

from __future__ import annotations

import hmac
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException

from engine.service.errors import NotFound, PathRefused

# Reachable without the token: the container HEALTHCHECK has no token, and says nothing secret.
OPEN_PATHS = frozenset({"/health"})
# The names this machine's loopback answers to: a page can make its own name resolve to 127.0.0.1,
# but it cannot make the browser send one of these in Host or Origin.
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
# No request of these methods changes anything here.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# What an HTML form (and a no-cors fetch) may send without asking the service first.
FORM_TYPES = (b"application/x-www-form-urlencoded", b"multipart/form-data", b"text/plain")
CLIENT_HEADER = b"x-likeness-client"
JSON_BODY_LIMIT = 1 * 2**20  # configs are a few KB; anything much larger is a mistake or an attack
# Linux's limits: longer names cannot exist, and asking the file system about them raises.
NAME_MAX = 255
PATH_MAX = 4096


def path_problem(text: str) -> str | None:
    """Why `text` can never name a file here (a NUL byte, a name or path over Linux's limits), or None."""
    if "\x00" in text:
        return "contains a NUL byte"
    if len(text.encode(errors="surrogateescape")) >= PATH_MAX:
        return f"is longer than {PATH_MAX} bytes"
    if any(len(part.encode(errors="surrogateescape")) > NAME_MAX for part in text.split("/")):
        return f"has a name longer than {NAME_MAX} bytes"
    return None


def contained(root: Path, path: str | Path) -> Path:
    """`root / path`, after symlinks, refusing anything that ends up outside `root`.

    Covers `..`, absolute paths (which `Path.__truediv__` would let replace `root`), symlinks
    pointing out, and %2F-encoded slashes (decoded before routing, so they arrive here as `/`).
    """
    text = str(path)
    if "\x00" in text:
        raise PathRefused(f"path {text!r} is not allowed")
    if path_problem(text):
        raise NotFound(f"no file {text[:80]!r}...: it {path_problem(text)}")
    root_real = Path(os.path.realpath(root))
    target = Path(os.path.realpath(text if Path(text).is_absolute() else root_real / text))
    if target != root_real and not target.is_relative_to(root_real):
        raise PathRefused(f"path {text!r} leads outside {root.name or root}")
    return target


def _deny(status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None):
    body = json.dumps({"detail": detail}).encode()

    async def send_response(send) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), *(headers or [])]})
        await send({"type": "http.response.body", "body": body})

    return send_response


class BodyTooLarge(HTTPException):
    """A request body that went past its limit while it streamed in (no Content-Length).

    An HTTPException: FastAPI re-raises those from its body parsing, where any other error would
    become a 400 "error parsing the body"."""

    def __init__(self, detail: str):
        super().__init__(status_code=413, detail=detail)


def host_name(value: str) -> str:
    """The name in a Host header or an Origin (no port, no brackets, lower case); '' if none."""
    try:
        parts = urlsplit(value if "//" in value else f"//{value}")
        return (parts.hostname or "").lower()
    except ValueError:
        return ""


def own_names(bind_host: str) -> frozenset[str]:
    """The Host names a service bound to `bind_host` answers without a token."""
    names = set(LOOPBACK_NAMES)
    if bind_host not in ("0.0.0.0", "::", ""):
        names.add(host_name(bind_host))
    return frozenset(names)


def foreign_request(method: str, headers: dict[bytes, bytes], names: frozenset[str], has_token: bool) -> str | None:
    """Why a request would be a foreign page's (rebinding, cross-site), or None when it is not."""
    host = headers.get(b"host", b"").decode("latin-1")
    if not has_token and host and host_name(host) not in names:
        return (f"Host {host[:80]!r} is not this service's name: use http://127.0.0.1, or set LIKENESS_TOKEN "
                "to serve other names")
    if method in SAFE_METHODS:
        return None
    origin = headers.get(b"origin")
    if origin is not None and host_name(origin.decode("latin-1")) not in names:
        return f"requests from the web page at {origin.decode('latin-1')[:80]!r} may not change anything here"
    content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    if not has_token and content_type in FORM_TYPES and CLIENT_HEADER not in headers:
        return (f"a {content_type.decode()} request needs the header 'X-Likeness-Client: 1' (or the token): "
                "a web page could send this one without it")
    return None


class Guard:
    """ASGI middleware: the Bearer token (constant-time) on every request, the Host and Origin checks,
    and body size limits."""

    def __init__(self, app, token: str | None, upload_limit: int, bind_host: str = "127.0.0.1"):
        self.app = app
        self.token = token.encode() if token else None
        self.upload_limit = upload_limit
        self.names = own_names(bind_host)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        foreign = foreign_request(scope["method"], headers, self.names, self.token is not None)
        if foreign is not None:
            return await _deny(403, foreign)(send)
        if self.token is not None and scope["path"] not in OPEN_PATHS:
            given = headers.get(b"authorization", b"")
            scheme, _, credential = given.partition(b" ")
            # compare_digest takes the same time wherever the first difference is: no timing oracle.
            if scheme.lower() != b"bearer" or not hmac.compare_digest(credential.strip(), self.token):
                deny = _deny(401, "missing or wrong token: send 'Authorization: Bearer <LIKENESS_TOKEN>'",
                             [(b"www-authenticate", b"Bearer")])
                return await deny(send)
        limit = self.upload_limit if scope["path"].endswith("/upload") else JSON_BODY_LIMIT
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_large = int(length) > limit
            except ValueError:
                return await _deny(400, "Content-Length is not a number")(send)
            if too_large:
                return await _deny(413, f"request body over the limit of {limit / 2**20:g} MiB")(send)

        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(f"request body over the limit of {limit / 2**20:g} MiB")
            return message

        return await self.app(scope, counted_receive, send)

