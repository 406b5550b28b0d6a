"""moto's S3 server on loopback: a real S3 API over HTTP for tests and the demo (no MinIO installs here).

``python -m runbooks.sandbox.s3server --port PORT``
"""

from __future__ import annotations

import argparse
import signal
import sys


def main() -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # Bound and served in the main thread (moto's ThreadedMotoServer binds in a thread and waits forever when the
    # port is taken): a server that cannot start exits at once, which is how 'sandbox up' notices it.
    server = make_server("127.0.0.1", args.port, DomainDispatcherApplication(create_backend_app), threaded=True,
                         request_handler=MotoRequestHandler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
