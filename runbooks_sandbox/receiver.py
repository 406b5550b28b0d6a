"""The sandbox's on-call: a webhook receiver on loopback standing in for Slack or PagerDuty, so a newcomer sees a
page arrive. Each message posted to ``/hook/<token>`` is appended to a log file the operator reads
(``tail -f .sandbox/notifications.log``); the sandbox's ``custom-webhook/sandbox-oncall`` block points here.

``python -m runbooks_sandbox.receiver --port PORT --log FILE``. The token comes from ``RECEIVER_TOKEN``, never
from the command line: the URL holding it is the block's secret, as a real webhook's is, and is never logged
(no access log).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import unicodedata
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request

MAX_MESSAGE_BYTES = 256 * 1024
RECORD = "=== "  # each message's first line starts so: "=== 2026-12-03 10:00:00 UTC"


def readable(text: str) -> str:
    """``text`` safe to ``cat`` in a terminal: control characters other than newline and tab become escapes, so a
    message cannot retitle or recolour the operator's terminal."""
    def escaped(ch: str) -> str:
        if ch in "\n\t" or unicodedata.category(ch) != "Cc":
            return ch
        return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"

    return "".join(map(escaped, text))


def message_text(body: bytes) -> str:
    """What a person reads of one posted message: the ``text`` of a Slack-shaped JSON payload (what the sandbox's
    block sends), any other JSON pretty-printed, anything else as text."""
    raw = body.decode(errors="replace")
    try:
        payload: Any = json.loads(raw)
    except ValueError:
        return raw
    if isinstance(payload, dict) and isinstance(payload.get("text"), str):
        return str(payload["text"])
    return json.dumps(payload, indent=2, ensure_ascii=False)


def append_message(log: Path, text: str, *, at: datetime | None = None) -> None:
    """One record per message, written with one ``write`` to a file private to its owner."""
    stamp = (at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S UTC")
    record = f"{RECORD}{stamp}\n{readable(text).rstrip()}\n\n".encode()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, record)
    finally:
        os.close(fd)


def count_messages(log: Path) -> int:
    """How many messages the log holds (0 when none arrived yet)."""
    try:
        with log.open(encoding="utf-8", errors="replace") as lines:
            return sum(1 for line in lines if line.startswith(RECORD))
    except FileNotFoundError:
        return 0


def create_app(*, token: str, log: Path) -> FastAPI:
    app = FastAPI(title="runbooks sandbox notification receiver", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "messages": count_messages(log)}

    @app.api_route("/hook/{given}", methods=["POST", "PUT"])
    async def hook(given: str, request: Request) -> dict[str, bool]:
        if not secrets.compare_digest(given.encode(), token.encode()):
            raise HTTPException(status_code=404)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_MESSAGE_BYTES:
                raise HTTPException(status_code=413, detail=f"a message is at most {MAX_MESSAGE_BYTES} bytes")
        append_message(log, message_text(body))
        return {"ok": True}

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True, help="file each message is appended to")
    args = parser.parse_args()
    token = os.environ.get("RECEIVER_TOKEN")  # from the environment: never on a command line
    if not token:
        raise SystemExit("RECEIVER_TOKEN must be set")
    # Loopback only, and no access log: a request line holds the token.
    uvicorn.run(create_app(token=token, log=args.log), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
