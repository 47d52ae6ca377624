"""uvicorn's h11 protocol with the two bounds it lacks: time to receive a request head, and open connections.

uvicorn times out idle keep-alive connections and (through our middleware) slow bodies, but a client that sends
its request line and headers one byte or one line at a time holds its connection as long as it likes, and
`limit_concurrency` is checked only once a head is complete, so such clients are never refused. Thousands of
them exhaust file descriptors and memory. Here:
  - every request head must arrive within `header_timeout_s` of its first byte (or of the connection opening):
    else 408 `header_timeout` and the connection is closed;
  - past `max_connections` open connections a new one is answered 503 `overloaded` at once and closed, before
    a byte of it is read. Each connection carries at most one request at a time, so this bounds tasks too.
`python -m app` and `s2crnet serve` use it; plain `uvicorn app.main:app` does not (see the README).
"""

import asyncio
import json
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .middleware import RETRY_AFTER_S

__all__ = ["guarded_protocol"]

log = logging.getLogger(__name__)


def _raw_answer(status: int, reason: str, code: str, detail: str, extra: str = "") -> bytes:
    body = json.dumps({"detail": detail, "code": code}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n{extra}\r\n").encode() + body


class _GuardedH11Protocol(H11Protocol):
    header_timeout_s: float = 10.0  # set by guarded_protocol()
    max_connections: int = 512

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            log.info("refused a connection: %d open, the most is %d", len(self.connections) - 1,
                     self.max_connections)
            transport.write(_raw_answer(503, "Service Unavailable", "overloaded",
                                        f"{self.max_connections} connections are open, the most this server "
                                        "takes; retry later", f"retry-after: {RETRY_AFTER_S}\r\n"))
            transport.close()
            return
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # (part of) a head, or the first byte of the next one
            self._arm_head_timer()
        else:  # the head is complete: the body and the work have their own deadlines
            self._disarm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        self._disarm_keep_alive()
        if self.conn.trailing_data[0]:  # a head was begun: say why (a silent connection is just closed)
            self.transport.write(_raw_answer(408, "Request Timeout", "header_timeout",
                                             f"the request line and headers took longer than "
                                             f"{self.header_timeout_s:g} s"))
        self.transport.close()

    def _disarm_keep_alive(self) -> None:
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type[H11Protocol]:
    """The protocol class to give uvicorn.Config(http=...), with these bounds."""
    return type("GuardedH11Protocol", (_GuardedH11Protocol,),
                {"header_timeout_s": header_timeout_s, "max_connections": max_connections})
