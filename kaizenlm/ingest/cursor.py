"""The FastAPI dependency that hands a route a cursor on the controller's one DuckDB connection.

DuckDB allows one read-write process per file, so the controller opens it once (app.state.db)
and every admin route works on its own cursor of that connection, closed after the request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import duckdb
from fastapi import Depends, Request


def db_cursor(request: Request) -> Iterator[duckdb.DuckDBPyConnection]:
    cursor = request.app.state.db.cursor()
    try:
        yield cursor
    finally:
        cursor.close()


Cursor = Annotated[duckdb.DuckDBPyConnection, Depends(db_cursor)]
