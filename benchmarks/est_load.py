"""A lean multi-process HTTPS load client for the EST benchmark.

Why not httpx in threads: a Python client in one process shares one GIL across its
threads and spends more CPU per request than the server does, so it measured itself
(it could drive the server to about 160 trivial requests/s). This client

- does all preparation before the timed phase: CSRs and factory certificates are made
  by the caller, every request is pre-built as bytes (request line, headers, body),
  every device's ``ssl.SSLContext`` (with its client certificate) is built in the
  worker before the start barrier;
- runs several worker PROCESSES (no shared GIL), each keeping ``conns`` connections in
  flight (one blocking socket per connection; with ``conns`` > 1 a few threads that
  only wait on the network);
- speaks just enough HTTP/1.1: writes the request, reads the head, then exactly
  ``Content-Length`` bytes (the server always sends it), keep-alive throughout;
- checks every status code (a non-200 counts as an error and is reported).

Two workloads:

- :func:`run_sessions`: one device EST session per TLS connection with the device's
  client certificate (mTLS): handshake, ``GET cacerts``, ``GET csrattrs``,
  ``POST simpleenroll`` (or ``simplereenroll``), close; result in enrolments/s;
- :func:`run_requests`: the same GET over keep-alive connections (baseline).
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

CRLF = b"\r\n"


def get(host: str, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n\r\n".encode()


def post(host: str, path: str, body: bytes, ctype: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@dataclass
class Device:
    """One device's session: its client certificate and the requests it sends."""

    cert_file: str
    key_file: str
    requests: list[bytes]


def _read_response(sock: ssl.SSLSocket, buf: bytes) -> tuple[int, bytes, bytes]:
    """(status, body, rest) reading blocking until one full response is in."""
    while CRLF + CRLF not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    head, _, rest = buf.partition(CRLF + CRLF)
    lines = head.split(CRLF)
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection mid-body")
        rest += chunk
    return status, rest[:length], rest[length:]


def _session_worker(
    addr: tuple[str, int],
    cafile: str,
    devices: list[Device],
    conns: int,
    keep: bool,
    per_request: bool,
    barrier: Any,
    out: Any,
) -> None:
    import threading

    # Contexts first (untimed): loading a certificate chain costs as much as a request.
    prepared: list[tuple[ssl.SSLContext, list[bytes]]] = []
    for d in devices:
        ctx = ssl.create_default_context(cafile=cafile)
        ctx.load_cert_chain(d.cert_file, d.key_file)
        prepared.append((ctx, d.requests))
    lanes = [prepared[i::conns] for i in range(conns)]
    results: list[tuple[int, list[str], list[bytes]]] = []
    lock = threading.Lock()

    def lane(work: list[tuple[ssl.SSLContext, list[bytes]]]) -> None:
        ok, errors, bodies = 0, [], []
        for ctx, reqs in work:
            try:
                raw = socket.create_connection(addr)
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with ctx.wrap_socket(raw, server_hostname=addr[0]) as s:
                    buf = b""
                    good = True
                    last = b""
                    for r in reqs:
                        s.sendall(r)
                        status, body, buf = _read_response(s, buf)
                        if status != 200:
                            errors.append(f"{status} {body[:200]!r}")
                            good = False
                            break
                        last = body
                        if per_request:
                            ok += 1
                            if keep:
                                bodies.append(body)
                    if good and not per_request:
                        ok += 1
                        if keep:
                            bodies.append(last)
            except (OSError, ValueError) as exc:
                errors.append(repr(exc))
        with lock:
            results.append((ok, errors, bodies))

    # Threads only to keep `conns` connections in flight per process; each lane is
    # I/O bound (the GIL is released while waiting for the server).
    threads = [threading.Thread(target=lane, args=(w,)) for w in lanes]
    barrier.wait(timeout=120)
    t0, cpu0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    ok = sum(r[0] for r in results)
    errors = [e for r in results for e in r[1]]
    bodies = [b for r in results for b in r[2]]
    out.put((ok, errors[:5], len(errors), elapsed, bodies, time.process_time() - cpu0))


def _request_worker(
    addr: tuple[str, int],
    cafile: str,
    request: bytes,
    count: int,
    conns: int,
    barrier: Any,
    out: Any,
) -> None:
    import threading

    ctx = ssl.create_default_context(cafile=cafile)
    socks = []
    for _ in range(conns):
        raw = socket.create_connection(addr)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(ctx.wrap_socket(raw, server_hostname=addr[0]))
    res: list[tuple[int, int]] = []
    lock = threading.Lock()

    def lane(s: ssl.SSLSocket, n: int) -> None:
        ok = bad = 0
        buf = b""
        for _ in range(n):
            s.sendall(request)
            status, _, buf = _read_response(s, buf)
            if status == 200:
                ok += 1
            else:
                bad += 1
        with lock:
            res.append((ok, bad))

    per = count // conns
    threads = [threading.Thread(target=lane, args=(s, per)) for s in socks]
    barrier.wait(timeout=120)
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    for s in socks:
        s.close()
    out.put((sum(r[0] for r in res), [], sum(r[1] for r in res), elapsed, [], 0.0))


@dataclass
class Result:
    ok: int
    errors: int
    first_errors: list[str]
    seconds: float
    bodies: list[bytes]
    #: CPU seconds of the client workers in the timed phase (sessions only)
    cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def _run(target: Any, args_per_proc: list[tuple[Any, ...]]) -> Result:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(args_per_proc) + 1)
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, barrier, out)) for a in args_per_proc]
    for p in procs:
        p.start()
    barrier.wait(timeout=120)
    t0 = time.perf_counter()
    parts = []
    for _ in procs:
        try:
            parts.append(out.get(timeout=600))
        except Exception as exc:  # a worker died: do not hang the benchmark
            for p in procs:
                p.kill()
            raise RuntimeError(f"an EST load worker failed: {exc!r}") from exc
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    return Result(
        ok=sum(p[0] for p in parts),
        errors=sum(p[2] for p in parts),
        first_errors=[e for p in parts for e in p[1]][:5],
        seconds=elapsed,
        bodies=[b for p in parts for b in p[4]],
        cpu=sum(p[5] for p in parts),
    )


def run_sessions(
    addr: tuple[str, int],
    cafile: str,
    devices: list[Device],
    *,
    procs: int,
    conns: int,
    keep_bodies: bool = False,
    per_request: bool = False,
) -> Result:
    """Every device runs its session on its own mTLS connection; ``procs`` processes
    with ``conns`` connections in flight each. Rate = completed sessions/s, measured
    from the start barrier to the last result; with ``per_request`` every 200
    response counts (a device that sends several enrolments over its keep-alive
    connection)."""
    slices = [devices[i::procs] for i in range(procs)]
    return _run(
        _session_worker,
        [(addr, cafile, s, conns, keep_bodies, per_request) for s in slices if s],
    )


def run_requests(
    addr: tuple[str, int], cafile: str, request: bytes, count: int, *, procs: int, conns: int
) -> Result:
    """``count`` copies of ``request`` over ``procs * conns`` keep-alive connections."""
    per = count // procs
    return _run(_request_worker, [(addr, cafile, request, per, conns) for _ in range(procs)])
