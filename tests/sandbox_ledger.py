"""Reading the sandbox's ledger: what the tests and the benchmark count. The product only writes it."""

import contextlib
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

from connector.adapters.contract import Operation
from connector.adapters.sandbox import DAY_S, EXECUTION_COLUMNS, CaptureRules, Execution, SandboxLedger, execution_from_row
from connector.models.payment import TransactionState


def executions(path: Path | str) -> list[Execution]:
    """Every operation the sandbox executed, oldest first; none while the ledger does not exist yet."""
    return [execution_from_row(row) for row in _select(path, f"SELECT {EXECUTION_COLUMNS} FROM executions ORDER BY executed_at")]


def execution_times(path: Path | str) -> list[float]:
    """When each execution happened (Unix time), oldest first: the benchmark's throughput clock."""
    return [float(at) for (at,) in _select(path, "SELECT executed_at FROM executions ORDER BY executed_at")]


def record_authorization(path: Path | str, cent_amount: int) -> str:
    """An authorization the sandbox made earlier (by another delivery), for payments that start out
    authorized; returns its PSP reference."""
    reference = f"sbx_{uuid.uuid4().hex}"
    ledger = SandboxLedger(path)
    try:
        ledger.submit(
            Execution(f"earlier-{reference}", Operation.AUTHORIZE, "earlier", f"earlier-{reference}", cent_amount, "EUR",
                      reference, TransactionState.SUCCESS, "authorized", "Amount reserved", 1),
            now=time.time() - DAY_S, retention_s=DAY_S, rules=CaptureRules(multiple_captures=False),
        )  # fmt: skip
    finally:
        ledger.close()
    return reference


def answers(path: Path | str) -> dict[str, int]:
    """How often the sandbox answered "in progress" (``in_progress``), forgot a key (``key_forgotten``),
    and was asked what it did for a transaction (``found``, ``not_found``)."""
    return {kind: count for kind, count in _select(path, "SELECT kind, count FROM answers")}


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
