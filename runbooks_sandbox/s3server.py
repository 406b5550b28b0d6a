"""moto's S3 server on loopback: a real S3 API over HTTP for tests and the demo (no MinIO installs here).

``python -m runbooks_sandbox.s3server --port PORT [--tls-cert CERT --tls-key KEY]``

With a certificate it speaks HTTPS: pgBackRest talks to S3 over TLS only.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from typing import Any


def main() -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls-cert", help="PEM certificate: serve HTTPS (with --tls-key)")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    args = parser.parse_args()
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    tls = None
    if args.tls_cert:
        import ssl

        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    # Bound and served in the main thread (moto's ThreadedMotoServer binds in a thread and waits forever when the
    # port is taken): a server that cannot start exits at once, which is how 'sandbox up' notices it.
    server = make_server("127.0.0.1", args.port, DomainDispatcherApplication(create_backend_app), threaded=True,
                         request_handler=MotoRequestHandler, ssl_context=tls)
    if tls is not None:
        _close_tls_cleanly(server)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    finally:
        server.server_close()


def _close_tls_cleanly(server: Any) -> None:
    """Send TLS close_notify before closing a connection. Werkzeug closes the socket bare after a response without
    a length, and OpenSSL 3 clients (pgBackRest) read that as a truncation ("unexpected eof while reading") and
    retry until they give up."""
    close = server.shutdown_request

    def shutdown_request(request: Any) -> None:
        with contextlib.suppress(OSError, ValueError):
            request.settimeout(2)
            request.unwrap()
        close(request)

    server.shutdown_request = shutdown_request


if __name__ == "__main__":
    main()
