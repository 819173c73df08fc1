"""The API listening socket: Nagle off on accepted connections, the service loop."""

from __future__ import annotations

import asyncio
import socket

from fleetwarden.service import bind_socket, run


def test_accepted_connections_have_nagle_off() -> None:
    """asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP; with Nagle
    on, a response written as head + body waited for the client's delayed ACK."""
    seen: list[int] = []

    async def main() -> None:
        sock = bind_socket("127.0.0.1", 0)
        assert sock.proto == socket.IPPROTO_TCP

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            s = writer.get_extra_info("socket")
            seen.append(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(handle, sock=sock)
        port = sock.getsockname()[1]
        _, w = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        w.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())  # the standard loop: uvloop sets TCP_NODELAY on any TCP socket
    assert seen and seen[0] != 0


def test_run_uses_uvloop_when_installed() -> None:
    import uvloop

    kinds: list[type] = []

    async def main() -> None:
        kinds.append(type(asyncio.get_running_loop()))

    run(main())
    assert kinds == [uvloop.Loop]
