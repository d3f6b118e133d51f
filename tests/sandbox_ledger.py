"""Reading the sandbox's ledger: what the tests and the benchmark count. The product only writes it."""

import contextlib
import sqlite3
from pathlib import Path

from connector.adapters.contract import Operation
from connector.adapters.sandbox import Execution
from connector.models.payment import TransactionState

_COLUMNS = (
    "idempotency_key, operation, payment_id, transaction_id, cent_amount, currency, psp_reference, state, code, text, calls"
)


def executions(path: Path | str) -> list[Execution]:
    """Every operation the sandbox executed, oldest first; none while the ledger does not exist yet."""
    rows = _select(path, f"SELECT {_COLUMNS} FROM executions ORDER BY executed_at")
    return [
        Execution(
            key, Operation(op), payment, transaction, amount, currency, reference, TransactionState(state), code, text, calls
        )
        for key, op, payment, transaction, amount, currency, reference, state, code, text, calls in rows
    ]


def execution_times(path: Path | str) -> list[float]:
    """When each execution happened (Unix time), oldest first: the benchmark's throughput clock."""
    return [at for (at,) in _select(path, "SELECT executed_at FROM executions ORDER BY executed_at")]


def _select(path: Path | str, query: str) -> list[tuple[object, ...]]:
    if not Path(path).exists():
        return []
    with contextlib.closing(sqlite3.connect(str(path), timeout=10.0)) as db:
        try:
            return db.execute(query).fetchall()
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):  # a worker has created the file, not yet its table
                return []
            raise
