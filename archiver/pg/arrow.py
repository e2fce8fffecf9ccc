"""Reading rows as Arrow record batches (ADBC: COPY binary -> Arrow), in a shared snapshot."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from ..errors import DatabaseError
from .connect import LOCK_NOT_AVAILABLE, PIN_SEARCH_PATH, LockTimeout, Session, safe_options, session
from .dsn import dsn_with, redact_dsn, scrub
from .quote import quote_literal

# --------------------------------------------------------------------------------------------
# Reading rows as Arrow (ADBC: COPY binary -> Arrow record batches)


# Reading a chunk waits at most this long for its lock. Two sessions of one export read the same
# chunk; were a third (a TimescaleDB job's drop_chunks, an ALTER) to queue for an exclusive lock
# between them, the second would wait behind it forever while the first waits for the second.
READ_LOCK_TIMEOUT_MS = 30_000


@contextlib.contextmanager
def shared_read_snapshot(dsn: str) -> Iterator[tuple[str, Session]]:
    """A REPEATABLE READ transaction whose snapshot other connections can share.

    The export stream (ADBC) and the fingerprint query (this session) then see exactly the same
    rows, even while late data keeps arriving.
    """
    with session(dsn, application_name="archiver archive") as current:
        # one core for the fingerprint: the export stream needs the others, and a production
        # server's parallel workers are not ours to take
        current.execute("SET max_parallel_workers_per_gather = 0")
        current.execute(f"SET lock_timeout = {READ_LOCK_TIMEOUT_MS}")
        current.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            snapshot_id = str(current.scalar("SELECT pg_export_snapshot()"))
            yield snapshot_id, current
        finally:
            try:
                current.execute("COMMIT")
            except DatabaseError:
                pass


def adbc_connect(dsn: str, application_name: str, **kwargs: Any) -> Any:
    """An ADBC connection whose search_path is safe from the start (a startup option, because the
    driver queries the catalog while connecting) and again after (a pooler may drop startup options)."""
    import adbc_driver_postgresql.dbapi as adbc_dbapi

    connection = adbc_dbapi.connect(dsn_with(dsn, application_name=application_name, options=safe_options(dsn)),
                                    **kwargs)
    try:
        cursor = connection.cursor()
        cursor.execute(PIN_SEARCH_PATH)
        cursor.fetchall()
        cursor.close()
        if not kwargs.get("autocommit"):
            connection.commit()
    except BaseException:
        connection.close()
        raise
    return connection


def adbc_error(exc: Exception, dsn: str, what: str = "reading rows") -> DatabaseError:
    message = f"database error on {redact_dsn(dsn)} ({what}): {scrub(str(exc), dsn).strip()}"
    return LockTimeout(message) if LOCK_NOT_AVAILABLE in str(exc) else DatabaseError(message)


CONNECTS = [0]  # ADBC connections opened by pools (a test proves a run's do not grow with its chunks)


class ArrowConnections:
    """ADBC connections of one run, reused from chunk to chunk.

    ADBC's connect reads the server's whole type catalog to build its type map, and a table's
    chunks each add a row type: on a database with 10,000 chunks one connect took 7.7 s, so a
    connection per chunk made the export of a one-row chunk cost seconds. A connection goes
    back to the pool only after its transaction ended cleanly; one that failed is closed.
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._free: list[Any] = []
        self._lock = threading.Lock()
        self.opened = 0

    def take(self) -> Any:
        import adbc_driver_manager

        with self._lock:
            if self._free:
                return self._free.pop()
        try:
            connection = adbc_connect(self.dsn, "archiver archive", autocommit=True)
        except adbc_driver_manager.Error as exc:
            raise adbc_error(exc, self.dsn) from None
        with self._lock:
            self.opened += 1
            CONNECTS[0] += 1
        return connection

    def give_back(self, connection: Any) -> None:
        with self._lock:
            self._free.append(connection)

    def close(self) -> None:
        with self._lock:
            free, self._free = self._free, []
        for connection in free:
            _close(connection)

    def __enter__(self) -> ArrowConnections:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close(connection: Any) -> None:
    import adbc_driver_manager

    try:
        connection.close()
    except adbc_driver_manager.Error:
        pass


def arrow_batches(dsn: str, sql: str, *, snapshot_id: str | None = None, batch_bytes: int = 8 * 1024 * 1024,
                  connections: ArrowConnections | None = None) -> Iterator[Any]:
    """Yield ``pyarrow.RecordBatch``es of ``sql`` read by ADBC (COPY ... TO STDOUT (FORMAT binary)).

    ``batch_bytes`` is the driver's batch size hint, which bounds memory whatever the result's size.
    With ``snapshot_id`` the rows come from that exported snapshot. With ``connections`` the
    connection comes from (and, when the read ended cleanly, goes back to) that pool.
    """
    import adbc_driver_manager

    pool = connections or ArrowConnections(dsn)
    connection = pool.take()
    clean = False
    try:
        cursor = connection.cursor()
        cursor.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(int(batch_bytes))})
        if snapshot_id is not None:
            cursor.execute(f"SET lock_timeout = {READ_LOCK_TIMEOUT_MS}")
            cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cursor.execute(f"SET TRANSACTION SNAPSHOT {quote_literal(snapshot_id)}")
        cursor.execute(sql)
        reader = cursor.fetch_record_batch()
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            yield batch
        if snapshot_id is not None:
            cursor.execute("COMMIT")
        cursor.close()
        clean = True
    except adbc_driver_manager.Error as exc:
        raise adbc_error(exc, dsn) from None
    finally:
        if clean and connections is not None:
            connections.give_back(connection)
        else:
            _close(connection)
