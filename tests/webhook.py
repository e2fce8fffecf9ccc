"""A real HTTP endpoint that records what webhooks post to it."""

from __future__ import annotations

import http.server
import json
import threading
from types import TracebackType
from typing import Any


class WebhookReceiver:
    def __init__(self, status: int = 200, *, fail_first: int = 0) -> None:
        """``status`` answers every post, except the first ``fail_first`` ones, which get a 503."""
        self.posts: list[dict[str, Any]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                receiver.posts.append({"path": self.path, "body": json.loads(self.rfile.read(length))})
                self.send_response(503 if len(receiver.posts) <= fail_first else status)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000/secret-token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self) -> WebhookReceiver:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.server.shutdown()
