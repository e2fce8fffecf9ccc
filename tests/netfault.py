"""Real network faults on loopback: TCP proxies that cut or stall a connection, and S3 error answers."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from botocore.awsrequest import AWSResponse

from archiver.pg.scratch import free_port


class _Proxy:
    """Forwards 127.0.0.1:port to an upstream; subclasses decide what each direction's ``_pipe`` does."""

    def __init__(self, upstream_host: str, upstream_port: int, port: int | None = None) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = port or free_port()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, is_request: bool) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stopped = True
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.close()
                except OSError:
                    pass

    def __enter__(self) -> _Proxy:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class CuttingProxy(_Proxy):
    """``arm(n)`` cuts the next response after n bytes."""

    def __init__(self, upstream_host: str, upstream_port: int, port: int | None = None) -> None:
        self._cut_after: int | None = None
        self.cuts = 0
        super().__init__(upstream_host, upstream_port, port)

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

    def _pipe(self, source: socket.socket, target: socket.socket, is_request: bool) -> None:
        try:
            while data := source.recv(65536):
                if not is_request:
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


class StallingProxy(_Proxy):
    """Forwards until ``stall_after_request_bytes`` have gone up (or, with
    ``stall_after_response_bytes``, come down), then holds every connection open without
    forwarding a byte more (a hung S3 endpoint).

    ``stalled`` is set at that moment: an upload through the proxy is then certainly in
    progress and cannot finish, which makes "kill the uploader mid-stream" deterministic.
    """

    def __init__(self, upstream_host: str, upstream_port: int, stall_after_request_bytes: int | None = None, *,
                 stall_after_response_bytes: int | None = None) -> None:
        self.stalled = threading.Event()
        self._budgets = {True: stall_after_request_bytes, False: stall_after_response_bytes}
        super().__init__(upstream_host, upstream_port)

    def _allowed(self, size: int, is_request: bool) -> int:
        with self._lock:
            budget = self._budgets[is_request]
            if self.stalled.is_set():
                return 0
            if budget is None:
                return size
            allowed = max(0, min(size, budget))
            self._budgets[is_request] = budget - allowed
            if allowed < size:
                self.stalled.set()
            return allowed

    def _pipe(self, source: socket.socket, target: socket.socket, is_request: bool) -> None:
        try:
            while data := source.recv(65536):
                allowed = self._allowed(len(data), is_request)
                target.sendall(data[:allowed])
                if allowed < len(data):
                    return  # hold the connection: neither forward nor close
        except OSError:
            pass


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts every connection and never answers (a hung endpoint)."""

    def __init__(self) -> None:
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._held: list[socket.socket] = []
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        return len(self._held)

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._held.append(client)  # held open, never read from nor written to

    def close(self) -> None:
        self._stopped = True
        self._listener.close()
        for sock in self._held:
            try:
                sock.close()
            except OSError:
                pass

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class PausingProxy(_Proxy):
    """Forwards until ``pause_after_request_bytes`` have gone up, then holds every byte, both ways,
    until ``resume()``: a slow upload that the test can keep in progress as long as it needs.

    ``paused`` is set when the budget runs out: the run behind the proxy is then certainly mid-upload.
    """

    def __init__(self, upstream_host: str, upstream_port: int, pause_after_request_bytes: int) -> None:
        self.paused = threading.Event()
        self._resumed = threading.Event()
        self._budget = pause_after_request_bytes
        super().__init__(upstream_host, upstream_port)

    def resume(self) -> None:
        self._resumed.set()

    def _allowed(self, size: int) -> int:
        with self._lock:
            allowed = max(0, min(size, self._budget))
            self._budget -= allowed
            if allowed < size:
                self.paused.set()
            return allowed

    def _pipe(self, source: socket.socket, target: socket.socket, is_request: bool) -> None:
        try:
            while data := source.recv(65536):
                if self._resumed.is_set():
                    target.sendall(data)
                    continue
                allowed = self._allowed(len(data)) if is_request else (0 if self.paused.is_set() else len(data))
                target.sendall(data[:allowed])
                if allowed < len(data):
                    self._resumed.wait()
                    target.sendall(data[allowed:])
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
        self._resumed.set()
        super().close()


def inject_s3_errors(store: Any, operation: str, failing: Callable[[int], bool], *, status: int = 500) -> list[str]:
    """Answer the n-th request of ``operation`` (n from 1) with an HTTP error before it reaches the
    server whenever ``failing(n)``; returns the URLs of every request seen."""
    calls: list[str] = []

    def handler(request: Any, **_: Any) -> AWSResponse | None:
        calls.append(request.url)
        if failing(len(calls)):
            body = b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"
            return AWSResponse(request.url, status, {"Content-Type": "application/xml"}, _Raw(body))
        return None

    store.client.meta.events.register(f"before-send.s3.{operation}", handler)
    return calls


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Any:
        yield self._body
