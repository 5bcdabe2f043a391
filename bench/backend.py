"""A small, cheap HTTP/1.1 keep-alive backend for the benchmarks (stdlib only).

One thread per connection, blocking sockets, a hand-written parser that only
looks at what the routes need.  It is the same backend for every subject, so
whatever it costs is paid equally; it runs in its own process, so its CPU time
never counts in the in-process CPU figure.

Routes:
  GET  /1k                 1024 bytes
  GET  /64k                65536 bytes
  POST /echo-len           reads the body, answers 1024 bytes
  PUT  /upload             discards the body, answers its length (text)
  GET  /stream?bytes=N     N bytes, generated without holding them
                           (add &chunked=1 for a chunked response)
  GET  /slow?pieces=P&delay=D
                           P bytes with Content-Length P: the first at once,
                           then one byte every D seconds
  GET  /304                304 Not Modified with an ETag, no Content-Length
  GET  /304-cl             the same with Content-Length: 1024 (allowed, rarer)
  GET  /stats              the number of connections accepted so far (text)

A HEAD request gets the head of the GET answer (its Content-Length) and no
body, as a well-behaved server does.

Usage: python backend.py [--port 0]   (prints "PORT <n>" once listening)
"""
import argparse
import socket
import sys
import threading
import time

BODY_1K = b"x" * 1024
BODY_64K = b"y" * 65536
STREAM_CHUNK = memoryview(b"z" * (256 * 1024))
RECV_SIZE = 256 * 1024


def _response(body, ctype=b"application/octet-stream"):
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype
        + b"\r\nContent-Length: " + str(len(body)).encode()
        + b"\r\n\r\n" + body
    )


RESP_1K = _response(BODY_1K)
RESP_64K = _response(BODY_64K)
RESP_1K_CLOSE = RESP_1K.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
RESP_64K_CLOSE = RESP_64K.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
RESP_304 = b'HTTP/1.1 304 Not Modified\r\nETag: "b1"\r\n\r\n'
RESP_304_CL = b'HTTP/1.1 304 Not Modified\r\nETag: "b1"\r\nContent-Length: 1024\r\n\r\n'
RESP_404 = b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found"
RESP_400 = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 11\r\nConnection: close\r\n\r\nbad request"


class Conn:
    __slots__ = ("buf", "scratch", "sock")

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.scratch = None

    def fill(self):
        data = self.sock.recv(RECV_SIZE)
        if not data:
            raise EOFError
        self.buf += data

    def read_head(self):
        while True:
            idx = self.buf.find(b"\r\n\r\n")
            if idx >= 0:
                head = self.buf[:idx]
                self.buf = self.buf[idx + 4:]
                return head
            if len(self.buf) > 65536:
                raise ValueError("head too large")
            self.fill()

    def discard(self, n):
        """Read and drop n body bytes; returns n."""
        have = len(self.buf)
        if have >= n:
            self.buf = self.buf[n:]
            return n
        left = n - have
        self.buf = b""
        if self.scratch is None:
            self.scratch = bytearray(RECV_SIZE)
        view = memoryview(self.scratch)
        recv_into = self.sock.recv_into
        while left:
            got = recv_into(view, min(RECV_SIZE, left))
            if not got:
                raise EOFError
            left -= got
        return n

    def readline(self):
        while True:
            idx = self.buf.find(b"\r\n")
            if idx >= 0:
                line = self.buf[:idx]
                self.buf = self.buf[idx + 2:]
                return line
            self.fill()

    def discard_chunked(self):
        total = 0
        while True:
            size = int(self.readline().split(b";", 1)[0], 16)
            if size == 0:
                while self.readline():  # trailers up to the empty line
                    pass
                return total
            total += self.discard(size)
            self.discard(2)


def parse_query(qs):
    out = {}
    for part in qs.split("&"):
        if part:
            k, _, v = part.partition("=")
            out[k] = v
    return out


ACCEPTED = [0]


def _head_only(sendall):
    """sendall() for a HEAD request: the head of the answer, never its body."""
    def send_head(data):
        if data[:5] == b"HTTP/":
            sendall(data[:data.index(b"\r\n\r\n") + 4])
    return send_head


def handle(sock):
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c = Conn(sock)
    socket_sendall = sock.sendall
    try:
        while True:
            head = c.read_head()
            lines = head.split(b"\r\n")
            try:
                method, target, version = lines[0].split(b" ", 2)
            except ValueError:
                socket_sendall(RESP_400)
                return
            clen = 0
            chunked = False
            close = version == b"HTTP/1.0"
            expect = False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    clen = int(value)
                elif name == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                elif name == b"connection":
                    v = value.strip().lower()
                    if v == b"close":
                        close = True
                    elif v == b"keep-alive":
                        close = False
                elif name == b"expect":
                    expect = b"100-continue" in value.lower()
            if expect:
                socket_sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            nbody = c.discard_chunked() if chunked else (c.discard(clen) if clen else 0)
            path, _, qs = target.decode("latin-1").partition("?")
            extra = b"Connection: close\r\n" if close else b""
            sendall = _head_only(socket_sendall) if method == b"HEAD" else socket_sendall

            if path == "/1k":
                sendall(RESP_1K_CLOSE if close else RESP_1K)
            elif path == "/64k":
                sendall(RESP_64K_CLOSE if close else RESP_64K)
            elif path == "/echo-len":
                sendall(RESP_1K_CLOSE if close else RESP_1K)
            elif path == "/upload":
                body = str(nbody).encode()
                sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                        + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)
            elif path == "/stream":
                q = parse_query(qs)
                n = int(q.get("bytes", "1048576"))
                if q.get("chunked") == "1":
                    sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                           b"Transfer-Encoding: chunked\r\n" + extra + b"\r\n")
                    left = n
                    size = len(STREAM_CHUNK)
                    while left:
                        k = min(size, left)
                        sendall(b"%x\r\n" % k)
                        sendall(STREAM_CHUNK[:k])
                        sendall(b"\r\n")
                        left -= k
                    sendall(b"0\r\n\r\n")
                else:
                    sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                           b"Content-Length: " + str(n).encode() + b"\r\n" + extra + b"\r\n")
                    left = n
                    size = len(STREAM_CHUNK)
                    while left >= size:
                        sendall(STREAM_CHUNK)
                        left -= size
                    if left:
                        sendall(STREAM_CHUNK[:left])
            elif path == "/slow":
                q = parse_query(qs)
                pieces = int(q.get("pieces", "5"))
                delay = float(q.get("delay", "0.2"))
                sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                        + str(pieces).encode() + b"\r\n" + extra + b"\r\na")
                for _ in range(pieces - 1):
                    time.sleep(delay)
                    sendall(b"a")
            elif path == "/304":
                sendall(RESP_304)
            elif path == "/304-cl":
                sendall(RESP_304_CL)
            elif path == "/stats":
                body = str(ACCEPTED[0]).encode()
                sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            else:
                sendall(RESP_404)
            if close:
                return
    except (EOFError, ConnectionError, OSError, ValueError):
        return
    finally:
        try:
            sock.close()
        except OSError:
            pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    if not (args.host.startswith("127.") or args.host in ("::1", "localhost")):
        sys.exit("loopback addresses only")
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((args.host, args.port))
    lsock.listen(1024)
    print("PORT %d" % lsock.getsockname()[1], flush=True)
    threading.stack_size(256 * 1024)
    while True:
        sock, _ = lsock.accept()
        ACCEPTED[0] += 1
        threading.Thread(target=handle, args=(sock,), daemon=True).start()


if __name__ == "__main__":
    main()
