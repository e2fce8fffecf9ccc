"""A TCP proxy that can drop a connection mid-response: a real network fault, on loopback."""

from __future__ import annotations

import socket
import threading
from types import TracebackType

from archiver.scratch import free_port


class CuttingProxy:
    """Forwards 127.0.0.1:port to an upstream; ``arm(n)`` cuts the next response after n bytes."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._cut_after: int | None = None
        self._lock = threading.Lock()
        self.cuts = 0
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def arm(self, cut_after_bytes: int) -> None:
        with self._lock:
            self._cut_after = cut_after_bytes

    def _take_budget(self, size: int) -> int | None:
        """How many of ``size`` bytes may pass before cutting, or None for no limit."""
        with self._lock:
            if self._cut_after is None:
                return None
            allowed = min(size, self._cut_after)
            self._cut_after -= allowed
            if self._cut_after == 0 and allowed < size:
                self._cut_after = None
                self.cuts += 1
                return allowed
            return None if allowed == size else allowed

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, is_response: bool) -> None:
        try:
            while data := source.recv(65536):
                if is_response:
                    allowed = self._take_budget(len(data))
                    if allowed is not None:
                        target.sendall(data[:allowed])
                        raise ConnectionAbortedError("cut by the test proxy")
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def close(self) -> None:
        self._stopped = True
        self._listener.close()

    def __enter__(self) -> "CuttingProxy":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
