"""A small TCP fault proxy on loopback for drills: latency, connections cut mid-stream, refused connections, and,
for HTTP upstreams, answers in the server's place (S3's 500 / 503 SlowDown, a platform that says yes and does
nothing). No maintained fault proxy installs here (toxiproxy's server does not), so this is ours, tests only.

Every fault is a budget or a switch changed while traffic flows; the proxy keeps counts so a test can show the
fault really happened (a drill whose fault never fired proves nothing).
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# (method, path) -> None to forward, or (status, reason, headers, body) to answer in the upstream's place.
HttpRule = Callable[[str, str], "tuple[int, str, dict[str, str], bytes] | None"]


def s3_error(status: int, code: str) -> tuple[int, str, dict[str, str], bytes]:
    """An S3 error response as AWS sends it (botocore reads the code from the XML body)."""
    reasons = {500: "Internal Server Error", 503: "Slow Down"}
    body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>injected by the fault '
            f'proxy</Message><RequestId>fault</RequestId></Error>').encode()
    return status, reasons.get(status, "Error"), {"Content-Type": "application/xml"}, body


@dataclass
class Counts:
    connections: int = 0
    cut: int = 0
    reset: int = 0
    answered: list[str] = field(default_factory=list)  # "METHOD path -> status" of each injected answer
    forwarded: int = 0


class FaultProxy:
    """Listens on 127.0.0.1:<port> and forwards to ``upstream``.

    - ``latency``: seconds added before each chunk, both ways;
    - ``cut_after``: a connection that has carried this many bytes (both ways) is cut, both sides closed, while
      ``cuts`` (a budget) lasts: mid-dump, mid-upload, mid-download;
    - ``reset``: new connections are accepted and reset at once (RST), while ``resets`` lasts;
    - ``down()`` / ``up()``: stop listening (connections refused) and listen again on the same port;
    - ``http_rule``: HTTP mode: each request is read whole and either answered by the rule or forwarded (one
      request per connection, ``Connection: close`` both ways).
    """

    def __init__(self, upstream: tuple[str, int], *, http_rule: HttpRule | None = None) -> None:
        self.upstream = upstream
        self.http_rule = http_rule
        self.latency = 0.0
        self.cut_after: int | None = None
        self.cuts = 0
        self.resets = 0
        self.counts = Counts()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._closed = False
        self._sockets: set[socket.socket] = set()
        self.port = 0
        self.up()

    # -- listening -----------------------------------------------------------------------------------------

    def up(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Stop listening: new connections are refused (ECONNREFUSED); open ones are cut."""
        listener, self._listener = self._listener, None
        if listener is not None:
            try:  # wakes the thread blocked in accept(); close() alone would leave the port listening
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        self.cut_all()

    def cut_all(self) -> None:
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            _close(sock)

    def close(self) -> None:
        self._closed = True
        self.down()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _addr = listener.accept()
            except OSError:
                return
            with self._lock:
                self.counts.connections += 1
                reset = self.resets > 0
                if reset:
                    self.resets -= 1
                    self.counts.reset += 1
            if reset:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            target = self._http if self.http_rule is not None else self._pipe
            threading.Thread(target=target, args=(client,), daemon=True).start()

    def _track(self, *sockets: socket.socket) -> None:
        with self._lock:
            self._sockets.update(sockets)

    def _untrack(self, *sockets: socket.socket) -> None:
        with self._lock:
            self._sockets.difference_update(sockets)
        for sock in sockets:
            _close(sock)

    # -- raw TCP -------------------------------------------------------------------------------------------

    def _pipe(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            _close(client)
            return
        server.settimeout(None)
        self._track(client, server)
        carried = [0]
        done = threading.Event()

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while not done.is_set():
                    chunk = src.recv(65536)
                    if not chunk:
                        break
                    if self.latency:
                        time.sleep(self.latency)
                    with self._lock:
                        carried[0] += len(chunk)
                        cut = (self.cut_after is not None and self.cuts > 0 and carried[0] >= self.cut_after)
                        if cut:
                            self.cuts -= 1
                            self.counts.cut += 1
                    if cut:
                        # Half of this chunk goes through, as when a link dies mid-packet train.
                        dst.sendall(chunk[: len(chunk) // 2])
                        break
                    dst.sendall(chunk)
            except OSError:
                pass
            finally:
                done.set()
                self._untrack(client, server)

        threading.Thread(target=pump, args=(client, server), daemon=True).start()
        pump(server, client)

    # -- HTTP ----------------------------------------------------------------------------------------------

    def _http(self, client: socket.socket) -> None:
        self._track(client)
        try:
            head, rest = _read_head(client)
            if head is None:
                return
            request_line, headers = _parse_head(head)
            method, path = request_line.split(" ")[:2]
            if self.latency:
                time.sleep(self.latency)
            answer = self.http_rule(method, path) if self.http_rule else None
            if answer is not None:
                status, reason, extra, body = answer
                with self._lock:
                    self.counts.answered.append(f"{method} {path} -> {status}")
                lines = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}", "Connection: close",
                         *(f"{k}: {v}" for k, v in extra.items())]
                client.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
                return  # the body (if any) is never read: a client waiting on 100-continue sends none
            if headers.get("expect", "").lower() == "100-continue":
                client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = _read_body(client, headers, rest)
            kept = [line for line in head.split(b"\r\n")[1:]
                    if line.split(b":")[0].strip().lower() not in (b"connection", b"expect", b"keep-alive")]
            upstream_head = b"\r\n".join([request_line.encode(), *kept, b"Connection: close"]) + b"\r\n\r\n"
            server = socket.create_connection(self.upstream, timeout=30)
            self._track(server)
            server.sendall(upstream_head + body)
            with self._lock:
                self.counts.forwarded += 1
            response, rest = _read_head(server)
            if response is None:
                return
            kept = [line for line in response.split(b"\r\n")
                    if line.split(b":")[0].strip().lower() not in (b"connection", b"keep-alive")]
            client.sendall(b"\r\n".join([*kept, b"Connection: close"]) + b"\r\n\r\n" + rest)
            while chunk := server.recv(65536):
                client.sendall(chunk)
            self._untrack(server)
        except (OSError, ValueError):
            pass
        finally:
            self._untrack(client)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _read_head(sock: socket.socket) -> tuple[bytes | None, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None, b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def _read_body(sock: socket.socket, headers: dict[str, str], rest: bytes) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        data = rest
        while not re.search(rb"(^|\r\n)0\r\n(.*\r\n)?\r\n", data, re.S):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data
    length = int(headers.get("content-length", "0") or 0)
    data = rest
    while len(data) < length:
        chunk = sock.recv(min(65536, length - len(data)))
        if not chunk:
            raise ValueError("client closed mid-body")
        data += chunk
    return data
