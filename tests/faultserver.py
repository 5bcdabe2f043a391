"""A misbehaving HTTP/1.1 backend for hardening tests and the soak script.

Run as ``python tests/faultserver.py PORT``; it prints ``ready`` once
listening.  Each path is one behaviour (keep-alive unless the fault ends
the connection); ``X-Request-Id`` is echoed in the answer so a client can
check that it got its own response.

``/head-split``, ``/204-split`` and ``/304-split`` send a head that declares
a body the answer must not have (ask ``/head-split`` with HEAD), then, a
moment later (``delay``, default 5 ms) in a second write, that body: a whole
response carrying the same ``X-Request-Id``.  A proxy that reused the
connection would read it as the answer to the next request on it.
"""

import socket
import sys
import threading
import time
from urllib.parse import parse_qs


def _answer(conn, rid, body, extra=b""):
    conn.sendall(b"HTTP/1.1 200 OK\r\nX-Request-Id: %s\r\nContent-Length: %d\r\n%s\r\n%s"
                 % (rid, len(body), extra, body))


def _read_body(conn, buf, head):
    """Read (and return the size of) the request body after ``head``; returns (size, rest)."""
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        size = 0
        while True:
            while b"\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    raise EOFError
                buf += data
            line, _, buf = buf.partition(b"\r\n")
            n = int(line.split(b";")[0], 16)
            while len(buf) < n + 2:
                data = conn.recv(65536)
                if not data:
                    raise EOFError
                buf += data
            buf = buf[n + 2:]
            size += n
            if not n:
                return size, buf
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            n = int(line.split(b":")[1])
            got = len(buf)
            while got < n:
                data = conn.recv(min(65536, n - got))
                if not data:
                    raise EOFError
                got += len(data)
                buf = b""
            return n, buf[n:] if len(buf) > n else b""
    return 0, buf


def handle(conn):
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
        head, _, buf = buf.partition(b"\r\n\r\n")
        line = head.split(b"\r\n", 1)[0]
        target = line.split(b" ")[1] if line.count(b" ") >= 2 else b"/"
        path, _, query = target.partition(b"?")
        args = {k: v[0] for k, v in parse_qs(query.decode()).items()}
        rid = b"-"
        for h in head.split(b"\r\n")[1:]:
            if h.lower().startswith(b"x-request-id:"):
                rid = h.split(b":", 1)[1].strip()
        try:
            size, buf = _read_body(conn, buf, head)
        except EOFError:
            return
        if not dispatch(conn, path, args, rid, size):
            return


_SPLIT = {b"/head-split": b"200 OK", b"/204-split": b"204 No Content",
          b"/304-split": b"304 Not Modified"}


def dispatch(conn, path, args, rid, size):
    """Answer one request; False ends the connection."""
    n = int(args.get("size", "100"))
    if path == b"/ok":
        _answer(conn, rid, b"%s:" % rid + b"x" * n)
    elif path == b"/upload":
        _answer(conn, rid, b"%d" % size)
    elif path == b"/chunked":
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Request-Id: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"%x\r\n%s\r\n0\r\n\r\n" % (rid, n, b"c" * n))
    elif path == b"/big":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
        block = b"b" * 65536
        left = n
        while left:
            piece = block[:min(left, 65536)]
            conn.sendall(piece)
            left -= len(piece)
    elif path == b"/close-mid-body":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"m" * 10)
        time.sleep(float(args.get("delay", "0")))
        return False
    elif path == b"/close-mid-chunk":
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\npartial")
        time.sleep(float(args.get("delay", "0")))
        return False
    elif path == b"/close-mid-headers":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Le")
        return False
    elif path == b"/close-before-answer":
        return False
    elif path == b"/garbage":
        conn.sendall(b"\x00\x01garbage\r\n\r\n")
        return False
    elif path == b"/bad-status":
        conn.sendall(b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n")
    elif path == b"/bad-header-bytes":
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Bad: a\x01b\r\nContent-Length: 0\r\n\r\n")
    elif path == b"/obs-fold":
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\nContent-Length: 0\r\n\r\n")
    elif path == b"/huge-headers":
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Huge: " + b"h" * 70000 + b"\r\nContent-Length: 0\r\n\r\n")
    elif path == b"/cl-te":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n0\r\n\r\n")
    elif path == b"/two-cl":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc")
    elif path == b"/extra-bytes":
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Request-Id: %s\r\nContent-Length: 2\r\n\r\nok"
                     b"HTTP/1.1 200 OK\r\nX-Request-Id: smuggled\r\nContent-Length: 8\r\n\r\n"
                     b"smuggled" % rid)
    elif path in _SPLIT:
        stray = b"%s:stray" % rid
        stray = (b"HTTP/1.1 200 OK\r\nX-Request-Id: %s\r\nContent-Length: %d\r\n\r\n%s"
                 % (rid, len(stray), stray))
        conn.sendall(b"HTTP/1.1 %s\r\nX-Request-Id: %s\r\nContent-Length: %d\r\n\r\n"
                     % (_SPLIT[path], rid, len(stray)))
        time.sleep(float(args.get("delay", "0.005")))  # a real backend's gap between writes
        conn.sendall(stray)
    elif path == b"/stall":
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
        time.sleep(float(args.get("seconds", "5")))
        return False
    elif path == b"/silent":
        time.sleep(float(args.get("seconds", "5")))
        return False
    elif path == b"/slow":
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(int(args.get("pieces", "5"))):
            conn.sendall(b"1\r\ns\r\n")
            time.sleep(float(args.get("pause", "0.1")))
        conn.sendall(b"0\r\n\r\n")
    else:
        conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    return True


def serve(port, host="127.0.0.1"):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    print("ready", flush=True)
    while True:
        conn, _ = sock.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def run(c=conn):
            try:
                handle(c)
            except OSError:
                pass
            finally:
                c.close()
        threading.Thread(target=run, daemon=True).start()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
