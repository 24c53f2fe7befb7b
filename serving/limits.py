"""A cap on request bodies, enforced before the body is read (an ASGI middleware in front of the app).

Why not in the request models: pydantic's `max_length` runs only after the whole body has been received and
parsed into Python objects, so a 1 GB body would be held in memory (twice) before it is refused. Here the body is
refused at the transport level instead: a declared `Content-Length` above the cap is answered 413 before a single
body byte is read, and a body without one (chunked transfer) is counted as it arrives and answered 413 as soon as
it passes the cap, without reading the rest (the server then closes the connection). At most `max_bytes` plus one
network chunk of a body is ever held.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def _message(max_bytes: int, declared: int | None) -> str:
    size = "" if declared is None else f" of {declared} bytes"
    return f"request body{size} exceeds the limit of {max_bytes} bytes"


class BodyTooLarge(HTTPException):
    """The body being received passed the cap. Raised from `receive`; an HTTPException because FastAPI turns any
    other exception met while reading a body into a 400, and passes this one to its 413 handler."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(status_code=413, detail=_message(max_bytes, None))


async def _refuse(send: Send, max_bytes: int, declared: int | None) -> None:
    body = json.dumps({"detail": _message(max_bytes, declared)}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware: HTTP request bodies over `max_bytes` are answered 413 without being read whole."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"body limit must be >= 1 byte, got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _refuse(send, self.max_bytes, declared)
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if started:  # the app answered before reading its body whole; nothing more can be said
                return
            await _refuse(send, self.max_bytes, None)


def _content_length(scope: Scope) -> int | None:
    """The declared Content-Length, or None when there is none (or it is malformed: the server refuses those, and
    the body is counted as it arrives either way)."""
    headers: list[tuple[bytes, Any]] = scope.get("headers", [])
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
