"""``python -m benchmarks.otlp_sink``: an OTLP/HTTP endpoint that takes every export and
drops it, for measuring what tracing costs the server (not what a collector costs).

    python -m benchmarks.otlp_sink --port 4318     # until killed; prints what it took
"""

from __future__ import annotations

import argparse
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

__all__ = ["main"]

_taken = {"posts": 0, "bytes": 0}


class _Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a collector does

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        self.rfile.read(length)
        _taken["posts"] += 1
        _taken["bytes"] += length
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")  # an empty ExportTraceServiceResponse
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), _Sink)

    def stop(signum: int, frame: FrameType | None) -> None:
        print(f"otlp sink: {_taken['posts']} exports, {_taken['bytes']} bytes", file=sys.stderr)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()


if __name__ == "__main__":
    main()
