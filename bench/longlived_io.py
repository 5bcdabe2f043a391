"""The network side of bench/longlived.py: backend, load clients, GET prober.

stdlib only (asyncio streams, raw sockets), no WSGIProxy code, so that none of
it can be the proxy's bottleneck or share its bugs.  Each role runs as its own
process, started by longlived.py:

  python longlived_io.py backend
      an asyncio HTTP/1.1 keep-alive server (prints "PORT <n>" once listening):
        GET /1k                          1024 bytes
        GET /sse?id=I&pieces=P&delay=D&size=S
                                         text/event-stream, chunked: P pieces of
                                         S bytes ("data: I k ...\\n\\n"), the first
                                         at once, then one every D seconds
        GET /ws                          a WebSocket echo (RFC 6455: text, binary,
                                         ping -> pong, close answered then the
                                         connection closed); without the upgrade
                                         headers: 426 Upgrade Required
  python longlived_io.py streams|websocket --port P --n N [...]
      N sessions arriving evenly over --ramp seconds, all in one asyncio loop;
      prints one JSON summary line (outcomes, timings, sessions held at once)
  python longlived_io.py probe --port P
      a plain GET /1k on a new connection every --interval seconds until its
      stdin closes; prints "READY" after the first one, then one JSON line

Every loop is bounded (a deadline per session and per run).
"""
import argparse
import asyncio
import base64
import collections
import errno
import hashlib
import json
import os
import resource
import select
import socket
import statistics
import sys
import time

LOOPBACK = "127.0.0.1"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WS_PROTOCOL = b"bench.echo"
BODY_1K = b"x" * 1024
RESP_1K = (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
           b"Content-Length: 1024\r\n\r\n" + BODY_1K)
RESP_404 = b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found"
RESP_426 = (b"HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n"
            b"Connection: close\r\nContent-Length: 33\r\n\r\nno WebSocket upgrade headers came")
SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
HEAD_LIMIT = 65536
OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


def raise_fd_limit():
    """Soft RLIMIT_NOFILE up to the hard limit; returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def piece(sid, k, size):
    """Piece k of stream sid: an SSE event of exactly size bytes (size >= 32)."""
    text = b"data: %d %d " % (sid, k)
    return text + b"." * (size - len(text) - 2) + b"\n\n"


def message(sid, k, size):
    """Message k of WebSocket session sid, size bytes."""
    text = b"ws %d %d " % (sid, k)
    return text + b"-" * (size - len(text))


def ws_accept(key):
    return base64.b64encode(hashlib.sha1(key + WS_GUID).digest())  # RFC 6455 says SHA-1


def unmask(payload, mask):
    n = len(payload)
    if not n:
        return payload
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
    return (int.from_bytes(payload, "little") ^ key).to_bytes(n, "little")


def ws_frame(first_byte, payload, mask=None):
    """One frame; masked (client to server) when mask is 4 bytes."""
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head = bytes((first_byte, bit | n))
    elif n < 65536:
        head = bytes((first_byte, bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first_byte, bit | 127)) + n.to_bytes(8, "big")
    if mask:
        return head + mask + unmask(payload, mask)
    return head + payload


async def ws_read_frame(reader):
    """(first byte, unmasked payload) of the next frame."""
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    mask = await reader.readexactly(4) if b1 & 0x80 else None
    payload = await reader.readexactly(n) if n else b""
    return b0, (unmask(payload, mask) if mask else payload)


def parse_head(head):
    """(first line, {lower-case name: value}) of a request or response head."""
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def tokens(value):
    return {t.strip().lower() for t in value.split(b",")}


# ---------------------------------------------------------------- backend


async def send_sse(writer, query):
    args = dict(p.partition(b"=")[::2] for p in query.split(b"&") if p)
    sid, pieces = int(args.get(b"id", b"0")), int(args.get(b"pieces", b"10"))
    delay, size = float(args.get(b"delay", b"0.5")), int(args.get(b"size", b"256"))
    writer.write(SSE_HEAD)
    for k in range(pieces):
        if k:
            await asyncio.sleep(delay)
        data = piece(sid, k, size)
        writer.write(b"%x\r\n%s\r\n" % (len(data), data))
        await writer.drain()
    writer.write(b"0\r\n\r\n")


async def ws_echo(reader, writer, headers):
    """The handshake, then echo frames until a close frame or EOF."""
    key = headers.get(b"sec-websocket-key")
    if (headers.get(b"upgrade", b"").lower() != b"websocket" or not key
            or b"upgrade" not in tokens(headers.get(b"connection", b""))):
        writer.write(RESP_426)
        await writer.drain()
        return
    head = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + ws_accept(key) + b"\r\n")
    if WS_PROTOCOL in tokens(headers.get(b"sec-websocket-protocol", b"")):
        head += b"Sec-WebSocket-Protocol: " + WS_PROTOCOL + b"\r\n"
    writer.write(head + b"\r\n")
    while True:
        b0, payload = await ws_read_frame(reader)
        opcode = b0 & 0x0F
        if opcode == OP_CLOSE:
            writer.write(ws_frame(0x80 | OP_CLOSE, payload[:2]))
            await writer.drain()
            return
        if opcode == OP_PING:
            writer.write(ws_frame(0x80 | OP_PONG, payload))
        elif opcode != OP_PONG:
            writer.write(ws_frame(b0, payload))
        await writer.drain()


async def serve_connection(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            line, headers = parse_head(head[:-4])
            target = line.split(b" ")[1] if line.count(b" ") >= 2 else b""
            length = int(headers.get(b"content-length", b"0") or 0)
            if length:
                await reader.readexactly(length)
            path, _, query = target.partition(b"?")
            if path == b"/ws":
                await ws_echo(reader, writer, headers)
                return
            if path == b"/1k":
                writer.write(RESP_1K)
            elif path == b"/sse":
                await send_sse(writer, query)
            else:
                writer.write(RESP_404)
            await writer.drain()
            if b"close" in tokens(headers.get(b"connection", b"")):
                return
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError,
            ValueError, IndexError):
        pass
    finally:
        writer.close()


async def backend_main(port):
    server = await asyncio.start_server(serve_connection, LOOPBACK, port, backlog=4096,
                                        limit=HEAD_LIMIT)
    print("PORT %d" % server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


# ---------------------------------------------------------------- clients


class Tally:
    """What the sessions of one run did, summed up in the client."""

    def __init__(self):
        self.outcomes = collections.Counter()
        self.examples = {}
        self.open_now = 0
        self.held_max = 0
        self.connect_ms = []
        self.first_ms = []  # first piece / first echo, from the connect
        self.spread_s = []  # first to last piece (streams)
        self.rtt_ms = []  # echo round trips (websocket)
        self.close_ms = []  # close frame sent -> connection closed (websocket)
        self.done_at = []  # seconds from the start of the run

    def opened(self):
        self.open_now += 1
        self.held_max = max(self.held_max, self.open_now)

    def outcome(self, kind, detail=""):
        self.outcomes[kind] += 1
        if detail and kind not in self.examples:
            self.examples[kind] = detail[:300]


def error_kind(exc, stage):
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout " + stage
    if isinstance(exc, asyncio.IncompleteReadError):
        return "closed " + stage
    if isinstance(exc, OSError) and exc.errno:
        return "%s %s" % (errno.errorcode.get(exc.errno, exc.errno), stage)
    return "%s %s" % (type(exc).__name__, stage)


async def read_response_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    line, headers = parse_head(head[:-4])
    return int(line.split(b" ")[1]), headers


async def body_pieces(reader, status, headers):
    """Yield the decoded body as it arrives, whatever the framing."""
    if status in (101, 204, 304) or 100 <= status < 200:
        return
    if b"chunked" in tokens(headers.get(b"transfer-encoding", b"")):
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if not size:
                return
            yield await reader.readexactly(size)
            await reader.readexactly(2)
    elif b"content-length" in headers:
        left = int(headers[b"content-length"])
        while left:
            data = await reader.read(min(left, 65536))
            if not data:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(data)
            yield data
    else:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            yield data


class Session:
    """What every session shares: its connection, the stage it is in (named in its
    error), whether it counts as open, and its end, recorded once whatever happens."""

    def __init__(self, tally, t_start):
        self.tally, self.t_start = tally, t_start
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self.stage, self.writer, self.is_open, self.got = "connecting", None, False, None

    async def connect(self, port):
        reader, self.writer = await asyncio.open_connection(LOOPBACK, port, limit=HEAD_LIMIT)
        self.tally.connect_ms.append((self.loop.time() - self.t0) * 1000)
        return reader, self.writer

    def opened(self):
        self.tally.opened()
        self.is_open = True

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if isinstance(exc, Exception):
            detail = str(exc) if self.got is None else "%s after %d body bytes" % (exc, self.got)
            self.tally.outcome(error_kind(exc, self.stage), detail)
        if self.is_open:
            self.tally.open_now -= 1
        self.tally.done_at.append(self.loop.time() - self.t_start)
        if self.writer is not None:
            self.writer.close()
        return isinstance(exc, Exception)  # recorded; a cancellation goes on


async def sse_session(sid, cfg, t_start, tally):
    """One slow stream; records its outcome in tally."""
    size, pieces = cfg.size, cfg.pieces
    expected = b"".join(piece(sid, k, size) for k in range(pieces))
    with Session(tally, t_start) as s:
        reader, writer = await s.connect(cfg.port)
        s.stage = "before the head"
        writer.write(b"GET /sse?id=%d&pieces=%d&delay=%s&size=%d HTTP/1.1\r\nHost: %s:%d\r\n"
                     b"Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
                     % (sid, pieces, str(cfg.delay).encode(), size, LOOPBACK.encode(), cfg.port))
        status, headers = await read_response_head(reader)
        if status != 200:
            tally.outcome("status %d" % status)
            return
        s.opened()
        s.stage, s.got = "in the body", 0
        body, times = bytearray(), []
        async for data in body_pieces(reader, status, headers):
            body += data
            s.got = len(body)
            now = s.loop.time()
            while len(times) < pieces and s.got >= (len(times) + 1) * size:
                times.append(now)
        if body != expected:
            tally.outcome("corrupt body", "%d of %d bytes, differing" % (s.got, len(expected)))
            return
        tally.first_ms.append((times[0] - s.t0) * 1000)
        spread = times[-1] - times[0]
        tally.spread_s.append(spread)
        # streamed: the pieces arrived about as far apart as the backend sent them;
        # buffered: all at once (the proxy waited for the whole body, or for a big read)
        sent_over = (pieces - 1) * cfg.delay
        if spread >= 0.5 * sent_over:
            tally.outcome("ok")
        elif spread < 0.1 * sent_over:
            tally.outcome("buffered", "intact, but all %d pieces within %.3f s" % (pieces, spread))
        else:
            tally.outcome("bunched", "intact, but the %d pieces sent over %.1f s came within "
                          "%.2f s" % (pieces, sent_over, spread))


async def ws_session(sid, cfg, t_start, tally):
    """One WebSocket echo session: handshake, cfg.pieces messages cfg.delay apart, close."""
    with Session(tally, t_start) as s:
        reader, writer = await s.connect(cfg.port)
        s.stage = "in the handshake"
        key = base64.b64encode(os.urandom(16))
        writer.write(b"GET /ws HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13"
                     b"\r\nSec-WebSocket-Protocol: %s\r\n\r\n"
                     % (LOOPBACK.encode(), cfg.port, key, WS_PROTOCOL))
        status, headers = await read_response_head(reader)
        if status != 101:
            tally.outcome("status %d" % status)
            return
        if headers.get(b"sec-websocket-accept") != ws_accept(key):
            tally.outcome("bad Sec-WebSocket-Accept", repr(headers))
            return
        if headers.get(b"sec-websocket-protocol") != WS_PROTOCOL:
            tally.outcome("subprotocol lost", repr(headers))
            return
        s.opened()
        for k in range(cfg.pieces):
            if k:
                await asyncio.sleep(cfg.delay)
            s.stage = "waiting for echo %d" % k
            data = message(sid, k, cfg.size)
            t = s.loop.time()
            writer.write(ws_frame(0x80 | OP_TEXT, data, os.urandom(4)))
            b0, echo = await asyncio.wait_for(ws_read_frame(reader), cfg.echo_timeout)
            now = s.loop.time()
            if k == 0:
                tally.first_ms.append((now - s.t0) * 1000)
            tally.rtt_ms.append((now - t) * 1000)
            if echo != data or b0 != 0x80 | OP_TEXT:
                tally.outcome("echo mismatch", "%r for %r" % (echo[:40], data[:40]))
                return
        s.stage = "closing"
        t = s.loop.time()
        writer.write(ws_frame(0x80 | OP_CLOSE, (1000).to_bytes(2, "big"), os.urandom(4)))
        b0, payload = await asyncio.wait_for(ws_read_frame(reader), cfg.echo_timeout)
        if b0 & 0x0F != OP_CLOSE or payload[:2] != (1000).to_bytes(2, "big"):
            tally.outcome("bad close frame", repr((b0, payload)))
            return
        s.stage = "waiting for the connection to close"
        rest = await asyncio.wait_for(reader.read(1), cfg.echo_timeout)
        if rest:
            tally.outcome("bytes after close", repr(rest))
            return
        tally.close_ms.append((s.loop.time() - t) * 1000)
        tally.outcome("ok")


def dist(values):
    if not values:
        return None
    values = sorted(values)
    n = len(values)
    return {"p50": statistics.median(values), "p99": values[min(n - 1, int(n * 0.99))],
            "max": values[-1], "n": n}


async def client_main(cfg):
    session = sse_session if cfg.scenario == "streams" else ws_session
    tally = Tally()
    loop = asyncio.get_running_loop()
    t_start = loop.time()

    async def one(sid):
        await asyncio.sleep(sid * cfg.ramp / cfg.n)  # arrivals spread evenly over the ramp
        left = t_start + cfg.deadline - loop.time()
        try:
            await asyncio.wait_for(session(sid, cfg, t_start, tally), max(left, 0.1))
        except asyncio.TimeoutError:  # the session records nothing itself then
            tally.outcome("run deadline (%.0f s)" % cfg.deadline)

    await asyncio.gather(*(one(sid) for sid in range(cfg.n)))
    return {
        "n": cfg.n, "outcomes": dict(tally.outcomes), "examples": tally.examples,
        "ok": tally.outcomes["ok"], "held_max": tally.held_max,
        "total_s": max(tally.done_at) if tally.done_at else None,
        "connect_ms": dist(tally.connect_ms), "first_ms": dist(tally.first_ms),
        "spread_s": dist(tally.spread_s), "rtt_ms": dist(tally.rtt_ms),
        "close_ms": dist(tally.close_ms),
        "client_cpu_s": sum(os.times()[:2]),
    }


# ---------------------------------------------------------------- prober


def get_1k(port, timeout):
    """One GET /1k on a new connection; returns the seconds it took, raises on failure."""
    t0 = time.perf_counter()
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(b"GET /1k HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n"
                     % (LOOPBACK.encode(), port))
        buf = b""
        while True:
            data = sock.recv(65536)
            if not data:
                break
            buf += data
            head, sep, body = buf.partition(b"\r\n\r\n")
            if sep and len(body) >= 1024:
                break
    if not buf.startswith(b"HTTP/1.1 200") or not buf.endswith(BODY_1K):
        raise ValueError("unexpected answer %r" % buf[:80])
    return time.perf_counter() - t0


def probe_main(port, interval, timeout):
    """GET /1k every interval seconds until stdin closes; one JSON line at the end."""
    latencies, errors = [], collections.Counter()
    next_at = time.monotonic()
    first = True
    while True:
        t0 = time.monotonic()
        try:
            latencies.append(get_1k(port, timeout) * 1000)
        except Exception as exc:
            latencies.append((time.monotonic() - t0) * 1000)
            errors[error_kind(exc, "").strip()] += 1
        if first:
            print("READY", flush=True)
            first = False
        next_at = max(next_at + interval, time.monotonic())
        ready, _, _ = select.select([sys.stdin], [], [], max(0.0, next_at - time.monotonic()))
        if ready:  # the harness closed our stdin: the run is over
            break
    print(json.dumps({"latency_ms": dist(latencies), "count": len(latencies),
                      "errors": dict(errors)}), flush=True)


# ---------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("role", choices=("backend", "streams", "websocket", "probe"))
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--n", type=int, default=1000, help="sessions")
    ap.add_argument("--ramp", type=float, default=2.0, help="seconds over which they arrive")
    ap.add_argument("--pieces", type=int, default=10, help="pieces / messages per session")
    ap.add_argument("--delay", type=float, default=0.5, help="seconds between pieces")
    ap.add_argument("--size", type=int, default=256, help="bytes per piece / message")
    ap.add_argument("--deadline", type=float, default=60.0, help="seconds for the whole run")
    ap.add_argument("--echo-timeout", type=float, default=10.0)
    ap.add_argument("--interval", type=float, default=0.1, help="probe: seconds between GETs")
    ap.add_argument("--timeout", type=float, default=5.0, help="probe: seconds per GET")
    cfg = ap.parse_args(argv)
    cfg.scenario = cfg.role
    raise_fd_limit()
    if cfg.role == "backend":
        asyncio.run(backend_main(cfg.port))
    elif cfg.role == "probe":
        probe_main(cfg.port, cfg.interval, cfg.timeout)
    else:
        print(json.dumps(asyncio.run(client_main(cfg))), flush=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
