"""HEAD on every GET route: the GET's status and headers without its body, as HTTP defines HEAD.

FastAPI registers only the methods a route names, so HEAD answered 405 while the 405's own Allow
header listed it. Answering HEAD as GET here covers every route at once, event streams included:
once the headers are out, the stream is told its client has gone, and it ends.
"""

from __future__ import annotations


class HeadAsGet:
    """ASGI middleware: a HEAD request is routed as GET; the body is never sent."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)
        done = False

        async def headers_only(message) -> None:
            nonlocal done
            if done:
                return  # a stream still producing after its headers went out: nobody reads it
            if message["type"] == "http.response.body":
                done = True
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        async def gone_once_answered():
            if done:
                return {"type": "http.disconnect"}
            return await receive()

        await self.app({**scope, "method": "GET"}, gone_once_answered, headers_only)
