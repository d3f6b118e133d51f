"""The sandbox adapter: a PSP simulator for the demo, the tests and the benchmark. It moves no money.

It keeps a ledger (an SQLite file, so that it outlives a worker process) of every operation it
executed, keyed by idempotency key, and honours those keys like a real PSP: a repeated call returns
the first outcome and only counts the call. The tests read the ledger to count executions
(``tests/sandbox_ledger.py``).

Outcome rules, by the transaction amount's last two digits (``centAmount % 100``):
- 13: an Authorization or Charge is declined (Failure, code ``card_declined``);
- 42: the PSP answers asynchronously (Pending, code ``pending``);
- 77: the PSP executes, but its answer to the first call is lost (``PspUnavailable``, as a timeout
  looks to a client); a retry with the same idempotency key gets the first outcome;
- anything else: Success.
A repeated idempotency key with a different operation or amount is refused (Failure, code
``idempotency_key_reused``), as real PSPs do.
"""

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from connector.adapters.contract import Operation, OperationRequest, Outcome, masked
from connector.errors import PspUnavailable
from connector.models.payment import TransactionState

DECLINED_ENDING = 13
PENDING_ENDING = 42
LOST_ANSWER_ENDING = 77

_SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    idempotency_key TEXT PRIMARY KEY,
    operation TEXT NOT NULL,
    payment_id TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    cent_amount INTEGER NOT NULL,
    currency TEXT NOT NULL,
    psp_reference TEXT NOT NULL,
    state TEXT NOT NULL,
    code TEXT NOT NULL,
    text TEXT NOT NULL,
    calls INTEGER NOT NULL,
    executed_at REAL NOT NULL
)
"""


class SandboxSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ledger_path: str = Field(default=":memory:", description="SQLite file of the ledger; shared by workers")
    latency_ms: int = Field(default=0, ge=0, description="simulated PSP round trip")


@dataclass(frozen=True, slots=True)
class Execution:
    idempotency_key: str
    operation: Operation
    payment_id: str
    transaction_id: str
    cent_amount: int
    currency: str
    psp_reference: str
    state: TransactionState
    code: str
    text: str
    calls: int


def _switch_to_wal(db: sqlite3.Connection, timeout_s: float) -> None:
    """``PRAGMA journal_mode=WAL``, retried while another process holds the lock: SQLite does not call
    its busy handler for this switch, so two workers opening a new ledger at once got "database is
    locked" at once, and one of them did not start."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
        time.sleep(0.02)


class SandboxLedger:
    """Operations executed by the simulator. Several processes may share one file."""

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(str(path), timeout=10.0, isolation_level=None, check_same_thread=False)
        _switch_to_wal(self._db, timeout_s=10.0)
        # Never fsync: the ledger must outlive a worker process, not the machine, and the checkpoints'
        # fsyncs stalled the worker's event loop for 5 to 7 ms every few hundred calls (a real PSP's
        # disk does not block the worker).
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(_SCHEMA)

    def record(self, proposed: Execution) -> Execution:
        """Stores ``proposed`` unless its key is known; returns what the key executed (with its call count)."""
        with self._transaction():
            stored = self._find(proposed.idempotency_key)
            if stored is None:
                self._db.execute(
                    "INSERT INTO executions VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        proposed.idempotency_key, proposed.operation.value, proposed.payment_id,
                        proposed.transaction_id, proposed.cent_amount, proposed.currency,
                        proposed.psp_reference, proposed.state.value, proposed.code, proposed.text, 1, time.time(),
                    ),
                )  # fmt: skip
                return proposed
            self._db.execute("UPDATE executions SET calls = calls + 1 WHERE idempotency_key = ?", (stored.idempotency_key,))
            return replace(stored, calls=stored.calls + 1)

    def close(self) -> None:
        self._db.close()

    def _find(self, key: str) -> Execution | None:
        row = self._db.execute(f"SELECT {EXECUTION_COLUMNS} FROM executions WHERE idempotency_key = ?", (key,)).fetchone()
        return None if row is None else execution_from_row(row)

    def _transaction(self) -> "_Immediate":
        return _Immediate(self._db)


EXECUTION_COLUMNS = (
    "idempotency_key, operation, payment_id, transaction_id, cent_amount, currency, psp_reference, state, code, text, calls"
)


def execution_from_row(row: tuple[Any, ...]) -> Execution:
    """An ``Execution`` from a row of ``EXECUTION_COLUMNS`` (the tests read the ledger with these too)."""
    key, operation, payment_id, transaction_id, amount, currency, reference, state, code, text, calls = row
    return Execution(
        key, Operation(operation), payment_id, transaction_id, amount, currency, reference,
        TransactionState(state), code, text, calls,
    )  # fmt: skip


class _Immediate:
    """``BEGIN IMMEDIATE``: takes the write lock first, so two processes cannot both insert a key."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")


_SUCCESS_CODE = {
    Operation.AUTHORIZE: ("authorized", "Amount reserved"),
    Operation.CHARGE: ("captured", "Amount charged"),
    Operation.REFUND: ("refunded", "Amount refunded"),
    Operation.CANCEL_AUTHORIZATION: ("cancelled", "Authorization cancelled"),
}


def simulate(operation: Operation, cent_amount: int) -> tuple[TransactionState, str, str]:
    """The sandbox's outcome rules (see the module docstring): state, code and text."""
    ending = cent_amount % 100
    if ending == DECLINED_ENDING and operation in (Operation.AUTHORIZE, Operation.CHARGE):
        return TransactionState.FAILURE, "card_declined", "The card was declined (sandbox: amount ending in 13)"
    if ending == PENDING_ENDING:
        return TransactionState.PENDING, "pending", "Awaiting asynchronous confirmation (sandbox: amount ending in 42)"
    code, text = _SUCCESS_CODE[operation]
    return TransactionState.SUCCESS, code, text


class SandboxAdapter:
    def __init__(self, ledger: SandboxLedger, latency_ms: int = 0) -> None:
        self._ledger = ledger
        self._latency_s = latency_ms / 1000

    async def authorize(self, request: OperationRequest) -> Outcome:
        return await self._execute(Operation.AUTHORIZE, request)

    async def charge(self, request: OperationRequest) -> Outcome:
        return await self._execute(Operation.CHARGE, request)

    async def refund(self, request: OperationRequest) -> Outcome:
        return await self._execute(Operation.REFUND, request)

    async def cancel_authorization(self, request: OperationRequest) -> Outcome:
        return await self._execute(Operation.CANCEL_AUTHORIZATION, request)

    async def aclose(self) -> None:
        self._ledger.close()

    async def _execute(self, operation: Operation, request: OperationRequest) -> Outcome:
        if self._latency_s:
            await asyncio.sleep(self._latency_s)
        amount = request.transaction.amount
        state, code, text = simulate(operation, amount.cent_amount)
        proposed = Execution(
            idempotency_key=request.idempotency_key,
            operation=operation,
            payment_id=request.payment.id,
            transaction_id=request.transaction.id,
            cent_amount=amount.cent_amount,
            currency=amount.currency_code,
            psp_reference=f"sbx_{uuid.uuid4().hex}",
            state=state,
            code=code,
            text=text,
            calls=1,
        )
        executed = self._ledger.record(proposed)
        if amount.cent_amount % 100 == LOST_ANSWER_ENDING and executed.calls == 1:
            raise PspUnavailable("the sandbox executed the operation and then timed out before answering")
        summary = _request_summary(operation, request)
        if (executed.operation, executed.cent_amount, executed.currency) != (
            operation, amount.cent_amount, amount.currency_code,
        ):  # fmt: skip
            text = "Idempotency key already used for a different operation or amount"
            return Outcome(TransactionState.FAILURE, None, "idempotency_key_reused", text, summary, {"error": text})
        response = {"reference": executed.psp_reference, "state": executed.state.value, "code": executed.code}
        return Outcome(executed.state, executed.psp_reference, executed.code, executed.text, summary, response)


def _request_summary(operation: Operation, request: OperationRequest) -> dict[str, Any]:
    token = request.payment.payment_method_info.token
    summary: dict[str, Any] = {
        "operation": operation.value,
        "amount": request.transaction.amount.cent_amount,
        "currency": request.transaction.amount.currency_code,
        "idempotencyKey": request.idempotency_key,
    }
    if token is not None:
        summary["paymentMethod"] = masked(token.value)
    return summary


def create_adapter(settings: Mapping[str, Any]) -> SandboxAdapter:
    """The ``sandbox`` entry point of ``connector.adapters``."""
    parsed = SandboxSettings.model_validate(settings)
    return SandboxAdapter(SandboxLedger(parsed.ledger_path), latency_ms=parsed.latency_ms)
