"""How many connections the service holds open, and how long a client may take to send its headers.

uvicorn bounds neither: a client that sends one header byte every few seconds holds its connection
(and a file descriptor) for good, and a few hundred of them use up the process's open files. Then
every new connection, /health included, fails at accept(), and asyncio logs that failure each time
it retries: hundreds of thousands of lines a minute.

So: a request's headers must arrive within `header_timeout_s`, and at most `max_connections` stay
open; a new one beyond that closes the connection that has waited longest for its headers (a slow
client, never a request being served), so a client that sends its request at once still gets in.
The loop's "out of system resource" error, should it still come, is logged once, not per retry.
"""

from __future__ import annotations

import asyncio
import resource
import sys
from dataclasses import dataclass

from uvicorn.protocols.http.h11_impl import H11Protocol

# Open files the service keeps for itself beside its connections: the database, logs, worker pipes.
RESERVED_FILES = 64
MOST_CONNECTIONS = 1000


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float = 10.0
    """Seconds a client has, from connecting (or from its previous response), to send a request's headers."""
    max_connections: int = MOST_CONNECTIONS
    """Connections held open at once."""


def connection_limits(header_timeout_s: float) -> ConnectionLimits:
    """The limits for this process: as many connections as its open-file limit leaves room for.

    The soft limit is raised to the hard one first: 1024 (a common soft default) is little for a
    service, and the hard limit is the administrator's word."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    room = MOST_CONNECTIONS if soft == resource.RLIM_INFINITY else soft - RESERVED_FILES
    return ConnectionLimits(header_timeout_s, max(8, min(MOST_CONNECTIONS, room // 2)))


def guarded_protocol(limits: ConnectionLimits) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with `limits` applied (a class: uvicorn makes one per connection)."""

    class GuardedH11(H11Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            self._deadline: asyncio.TimerHandle | None = None
            self._waiting_since = self.loop.time()
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                waiting = [c for c in self.connections if isinstance(c, GuardedH11) and c is not self
                           and c._waiting_for_headers()]
                if not waiting:  # every other connection is being served: this one waits its turn elsewhere
                    transport.close()
                    return
                min(waiting, key=lambda c: c._waiting_since).transport.close()
            self._arm()

        def _waiting_for_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            if self._deadline is None:
                self._waiting_since = self.loop.time()
                self._deadline = self.loop.call_later(limits.header_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self._waiting_for_headers() and not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._waiting_for_headers():
                self._arm()  # the next request's headers are on their way: from now they have the timeout
            super().data_received(data)
            if not self._waiting_for_headers():
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return GuardedH11


def log_resource_errors_once(loop: asyncio.AbstractEventLoop) -> None:
    """Install a loop exception handler that says "out of system resource" once, not at every retry."""
    default = loop.get_exception_handler()
    said: set[str] = set()

    def handler(loop_: asyncio.AbstractEventLoop, context: dict) -> None:
        message = str(context.get("message", ""))
        if "out of system resource" in message:
            if message not in said:
                said.add(message)
                error = context.get("exception")
                print(f"likeness service: {message} ({error}); new connections wait until some close "
                      "(raise the open-file limit, ulimit -n, if this is real use)", file=sys.stderr, flush=True)
            return
        if default is not None:
            default(loop_, context)
        else:
            loop_.default_exception_handler(context)

    loop.set_exception_handler(handler)
