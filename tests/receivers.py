"""A real HTTP receiver on loopback standing in for Slack or PagerDuty behind a Prefect notification block."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Inbox:
    """One receiver on loopback; every message it got, as text."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        texts = self.texts

        class Receiver(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                texts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["text"])
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [t for t in self.texts if predicate(t)]
            if found:
                return found[0]
            time.sleep(0.5)
        raise AssertionError(f"no such notification within {timeout} s; got: {self.texts}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
