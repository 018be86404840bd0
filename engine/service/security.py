"""Who may talk to the service, how much they may send, and which paths they may reach.

The token check and the body limit are plain ASGI middleware so they also cover event streams
and requests that never reach a route (404s, bad JSON): no request is served before both pass.
"""

from __future__ import annotations

import hmac
import json
import os
from pathlib import Path

from starlette.exceptions import HTTPException

from engine.service.errors import NotFound, PathRefused

# Reachable without the token: the container HEALTHCHECK has no token, and says nothing secret.
OPEN_PATHS = frozenset({"/health"})
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


class Guard:
    """ASGI middleware: the Bearer token (constant-time) on every request, and body size limits."""

    def __init__(self, app, token: str | None, upload_limit: int):
        self.app = app
        self.token = token.encode() if token else None
        self.upload_limit = upload_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
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

