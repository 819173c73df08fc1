"""Request body size limits, enforced while the body streams in (not after)."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimitMiddleware:
    """Refuse bodies over a limit with 413, whether declared by Content-Length or not.

    ``large_paths`` maps path suffixes (bulk endpoints) to their own, larger limit.
    """

    def __init__(self, app: ASGIApp, *, limit: int, large_paths: dict[str, int]) -> None:
        self.app = app
        self.limit = limit
        self.large_paths = large_paths

    def _limit_for(self, path: str) -> int:
        for suffix, limit in self.large_paths.items():
            if path.endswith(suffix):
                return limit
        return self.limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit_for(scope["path"])
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _reply(send, 400, "invalid Content-Length")
                    return
                if declared > limit:
                    await _reply(send, 413, f"request body over the {limit}-byte limit")
                    return
        received = 0
        started = False
        refused = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Answer now and tell the app the client went away; whatever it
                    # sends afterwards is dropped.
                    refused = True
                    if not started:
                        await _reply(send, 413, f"request body over the {limit}-byte limit")
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except Exception:
            if not refused:
                raise


async def _reply(send: Send, status: int, detail: str) -> None:
    body = json.dumps(
        {"error": "TooLargeError" if status == 413 else "BadRequest", "detail": detail}
    ).encode()
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
