"""Reading the sandbox's ledger: what the tests and the benchmark count. The product only writes it."""

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

from connector.adapters.sandbox import EXECUTION_COLUMNS, Execution, execution_from_row


def executions(path: Path | str) -> list[Execution]:
    """Every operation the sandbox executed, oldest first; none while the ledger does not exist yet."""
    return [execution_from_row(row) for row in _select(path, f"SELECT {EXECUTION_COLUMNS} FROM executions ORDER BY executed_at")]


def execution_times(path: Path | str) -> list[float]:
    """When each execution happened (Unix time), oldest first: the benchmark's throughput clock."""
    return [float(at) for (at,) in _select(path, "SELECT executed_at FROM executions ORDER BY executed_at")]


def _select(path: Path | str, query: str) -> list[tuple[Any, ...]]:
    if not Path(path).exists():
        return []
    with contextlib.closing(sqlite3.connect(str(path), timeout=10.0)) as db:
        try:
            return db.execute(query).fetchall()
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):  # a worker has created the file, not yet its table
                return []
            raise
