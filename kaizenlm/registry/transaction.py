"""One helper: run registry writes in a transaction, or inside the caller's if one is open."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import duckdb


def in_transaction(con: duckdb.DuckDBPyConnection) -> bool:
    """True when the caller has BEGUN a transaction on this connection.

    DuckDB has no flag for it, and a nested BEGIN aborts the open transaction, so ask
    twice for the transaction id: in auto-commit mode every statement gets a new one.
    """
    first = con.execute("SELECT txid_current()").fetchone()[0]
    return con.execute("SELECT txid_current()").fetchone()[0] == first


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """BEGIN/COMMIT around the block; ROLLBACK if it raises.

    When the caller already holds a transaction, the block joins it and the caller
    decides: e.g. curation can forget a user's rows and mark the versions built from them
    tainted in one transaction.
    """
    if in_transaction(con):
        yield
        return
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
