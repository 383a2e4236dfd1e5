"""The stack's HTTP app: /health answers once PostgreSQL and Redis accept connections;
PUT /uploads/NAME stores a file in the bind-mounted uploads directory."""

import os
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

UPLOADS = Path("/srv/uploads")


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/health":
            self.send_error(404)
            return
        db = reachable(os.environ["DATABASE_HOST"], 5432)
        cache = reachable(os.environ["REDIS_HOST"], 6379)
        body = f"db={'ok' if db else 'down'} cache={'ok' if cache else 'down'}\n".encode()
        self.send_response(200 if db and cache else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        name = Path(self.path).name
        data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        (UPLOADS / name).write_bytes(data)
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()


ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
