"""Reading the sandbox's ledger: what the tests and the benchmark count. The product only writes it."""

import asyncio
import contextlib
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson

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
from connector.adapters.sandbox_notifications import notice_body, signed_headers
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


class SandboxNotifier:
    """Plays the sandbox PSP deciding its Pending executions later: settles each in the ledger (Success),
    then notifies the receiver at ``url``, delivering the same event again (signed anew) until it answers
    2xx, as Stripe retries a notification for days."""

    def __init__(self, ledger: Path, url: str, secret: str) -> None:
        self._ledger, self._url, self._secret = ledger, url, secret
        self.unanswered: dict[str, tuple[str, bytes]] = {}  # reference -> (payment id, body) not yet accepted
        self.accepted: dict[str, str] = {}  # reference -> event id the receiver took
        self.failed_attempts = 0

    async def run(self, stop: asyncio.Event, interval_s: float = 0.3) -> None:
        async with httpx.AsyncClient(timeout=5) as http:
            while not stop.is_set():
                self._settle_new()  # nothing while the ledger does not exist yet
                for reference, (_, body) in list(self.unanswered.items()):
                    try:
                        answer = await http.post(self._url, content=body, headers=signed_headers(body, self._secret))
                    except httpx.HTTPError:
                        answer = None
                    if answer is not None and answer.is_success:
                        self.accepted[reference] = orjson.loads(body)["id"]
                        del self.unanswered[reference]
                    else:
                        self.failed_attempts += 1
                await asyncio.sleep(interval_s)

    def _settle_new(self) -> None:
        due = [
            e for e in executions(self._ledger)
            if e.state is TransactionState.PENDING and e.psp_reference not in self.unanswered and e.completes_at <= time.time()
        ]  # fmt: skip
        if not due:
            return
        ledger = SandboxLedger(self._ledger)
        try:
            for execution in due:
                code, text = SUCCESS_CODE[execution.operation]
                ledger.settle(execution.psp_reference, TransactionState.SUCCESS, code, text)
                self.unanswered[execution.psp_reference] = (
                    execution.payment_id,
                    notice_body(execution.psp_reference, execution.payment_id),
                )
        finally:
            ledger.close()
