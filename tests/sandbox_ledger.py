"""Reading the sandbox's ledger: what the tests and the benchmark count. The product only writes it."""

import contextlib
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

from connector.adapters.contract import OPERATION_FOR, Operation
from connector.adapters.sandbox import (
    DAY_S,
    EXECUTION_COLUMNS,
    SUCCESS_CODE,
    CaptureRules,
    Execution,
    SandboxLedger,
    execution_from_row,
)
from connector.models.payment import TransactionState, TransactionType

# The payment id of executions recorded before a test (record_execution), which are not the connector's work.
EARLIER = "earlier"


def executions(path: Path | str) -> list[Execution]:
    """Every operation the sandbox executed for the connector, oldest first; none while the ledger does not exist yet."""
    query = f"SELECT {EXECUTION_COLUMNS} FROM executions WHERE payment_id != '{EARLIER}' ORDER BY executed_at"
    return [execution_from_row(row) for row in _select(path, query)]


def execution_times(path: Path | str) -> list[float]:
    """When each execution happened (Unix time), oldest first: the benchmark's throughput clock."""
    query = f"SELECT executed_at FROM executions WHERE payment_id != '{EARLIER}' ORDER BY executed_at"
    return [float(at) for (at,) in _select(path, query)]


def record_execution(path: Path | str, operation: Operation, cent_amount: int) -> str:
    """A Success the sandbox gave earlier (to another delivery), for payments that start out authorized or
    charged: the strict sandbox captures, cancels and refunds only what it made. Returns its reference."""
    reference = f"sbx_{uuid.uuid4().hex}"
    code, text = SUCCESS_CODE[operation]
    ledger = SandboxLedger(path)
    try:
        ledger.submit(
            Execution(f"earlier-{reference}", operation, EARLIER, f"earlier-{reference}", cent_amount, "EUR",
                      reference, TransactionState.SUCCESS, code, text, 1),
            now=time.time() - DAY_S, retention_s=DAY_S, rules=CaptureRules(multiple_captures=False),
        )  # fmt: skip
    finally:
        ledger.close()
    return reference


def references_for(path: Path | str, done: tuple[tuple[str, int], ...]) -> tuple[str, ...]:
    """PSP references the sandbox at ``path`` knows, for a payment draft's ``done`` transactions."""
    return tuple(record_execution(path, OPERATION_FOR[TransactionType(kind)], amount) for kind, amount in done)


def answers(path: Path | str) -> dict[str, int]:
    """How often the sandbox answered "in progress" (``in_progress``), forgot a key (``key_forgotten``),
    and was asked what it did for a transaction (``found``, ``not_found``; ``found_key_forgotten``: found
    after the execution's key was forgotten, where a call with the key would have executed again)."""
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
