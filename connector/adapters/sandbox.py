"""The sandbox adapter: a PSP simulator for the demo, the tests and the benchmark. It moves no money.

It keeps a ledger (an SQLite file, so that it outlives a worker process and is shared by several)
of every operation it executed, and is as strict as a real PSP (Stripe) about idempotency keys:
- a repeated key gets the first answer again, and only counts the call;
- a key whose request is still running (the PSP works ``latency_ms`` on each) is answered "in
  progress" (``PspRequestInProgress``); the request goes on even if its caller gave up or died;
- a stored server error is replayed for its key, as Stripe stores a 500 with the key;
- keys are forgotten after ``key_retention_s`` (Stripe: 24 hours): the same key then executes again;
- a key reused with another operation or amount is refused (``PermanentError``: its first request
  may have moved money, so no Failure is stored);
- an authorization is captured once (unless ``multiple_captures``), within its amount; a capture or
  cancel must name an authorization the sandbox made, and a refund a charge it made, within its amount.
``find`` answers what the sandbox did for a transaction, by transaction id, whatever its keys.
With ``webhook_secret`` set it takes notifications (``connector.adapters.sandbox_notifications``):
a notice names an execution, which the worker reads fresh from the ledger.
The tests read the ledger to count executions (``tests/sandbox_ledger.py``).

Outcome rules, by the transaction amount's last two digits (``centAmount % 100``):
- 13: an Authorization or Charge is declined (Failure, code ``card_declined``);
- 42: the PSP answers asynchronously (Pending, code ``pending``); with ``pending_settles_s`` set,
  ``find`` answers Success from that long after (the customer authenticated, the bank confirmed);
- 55: the PSP fails with a server error (``PspUnavailable``) and stores it for the key: every later
  call with the key gets it again (``PspStoredError``, as Stripe marks a replay), and nothing is executed;
- 77: the PSP executes, but its answer to the first call is lost (``PspUnavailable``, as a timeout
  looks to a client); a retry with the same key gets the first outcome;
- 88: the PSP works ``slow_ms`` on it instead of ``latency_ms``: with ``timeout_ms`` shorter, the
  caller times out (``PspUnavailable``) while the PSP goes on, and retries meet "in progress";
- anything else: Success.
"""

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from connector.adapters import sandbox_notifications
from connector.adapters.contract import (
    OPERATION_FOR,
    Capabilities,
    Finding,
    Operation,
    OperationRequest,
    Outcome,
    PspState,
    masked,
)
from connector.errors import PermanentError, PspRequestInProgress, PspStoredError, PspUnavailable
from connector.models.notice import Notice
from connector.models.payment import Payment, TransactionState, TransactionType

DECLINED_ENDING = 13
PENDING_ENDING = 42
STORED_ERROR_ENDING = 55
LOST_ANSWER_ENDING = 77
SLOW_ENDING = 88
DAY_S = 86_400.0

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS executions (
        psp_reference TEXT PRIMARY KEY,
        idempotency_key TEXT NOT NULL,
        operation TEXT NOT NULL,
        payment_id TEXT NOT NULL,
        transaction_id TEXT NOT NULL,
        cent_amount INTEGER NOT NULL,
        currency TEXT NOT NULL,
        state TEXT NOT NULL,
        code TEXT NOT NULL,
        text TEXT NOT NULL,
        calls INTEGER NOT NULL,
        executed_at REAL NOT NULL,
        completes_at REAL NOT NULL,
        target TEXT
    )
    """,
    "CREATE INDEX IF NOT EXISTS executions_by_transaction ON executions (transaction_id)",
    "CREATE INDEX IF NOT EXISTS executions_by_target ON executions (target)",
    # How often the PSP answered "in progress", forgot a key, or was asked what it did (found or not).
    "CREATE TABLE IF NOT EXISTS answers (kind TEXT PRIMARY KEY, count INTEGER NOT NULL)",
    # What the PSP remembers of each key, until it forgets it: an execution, or a stored error.
    """
    CREATE TABLE IF NOT EXISTS idempotency_keys (
        idempotency_key TEXT PRIMARY KEY,
        psp_reference TEXT,
        error TEXT,
        operation TEXT NOT NULL,
        cent_amount INTEGER NOT NULL,
        currency TEXT NOT NULL,
        stored_at REAL NOT NULL
    )
    """,
)


class SandboxSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ledger_path: str = Field(default=":memory:", description="SQLite file of the ledger; shared by workers")
    latency_ms: int = Field(default=0, ge=0, description="how long the PSP works on each request")
    slow_ms: int = Field(default=0, ge=0, description="how long it works on amounts ending in 88 (0: latency_ms)")
    timeout_ms: int | None = Field(default=None, gt=0, description="the caller's timeout; the PSP goes on after it")
    key_retention_s: float = Field(default=DAY_S, gt=0, description="how long idempotency keys are remembered")
    multiple_captures: bool = Field(default=False, description="an authorization may be captured more than once")
    find_executions: bool = Field(default=True, description="offer the optional find operation")
    pending_settles_s: float | None = Field(
        default=None, ge=0, description="a Pending execution (amount ending in 42) becomes Success this long after; empty: never"
    )
    webhook_secret: str | None = Field(default=None, min_length=8, description="signs its notifications; empty: it sends none")


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
    completes_at: float = 0.0  # Unix time at which the PSP finishes it
    target: str | None = None  # the authorization a capture or cancel addresses, the charge a refund does


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
    """Operations executed by the simulator, and the idempotency keys it remembers. Several processes
    may share one file; each method is one transaction under SQLite's write lock."""

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(str(path), timeout=10.0, isolation_level=None, check_same_thread=False)
        _switch_to_wal(self._db, timeout_s=10.0)
        # Never fsync: the ledger must outlive a worker process, not the machine, and the checkpoints'
        # fsyncs stalled the worker's event loop for 5 to 7 ms every few hundred calls (a real PSP's
        # disk does not block the worker).
        self._db.execute("PRAGMA synchronous=OFF")
        for statement in _SCHEMA:
            self._db.execute(statement)

    def submit(self, proposed: Execution, *, now: float, retention_s: float, rules: "CaptureRules") -> "Answer":
        """One request at the PSP: what its key already stands for, or ``proposed`` executed (or refused
        by the capture rules) and remembered under its key."""
        with _Immediate(self._db):
            key = self._db.execute(
                "SELECT psp_reference, error, operation, cent_amount, currency, stored_at FROM idempotency_keys"
                " WHERE idempotency_key = ?",
                (proposed.idempotency_key,),
            ).fetchone()
            if key is not None and key[5] + retention_s <= now:
                self._db.execute("DELETE FROM idempotency_keys WHERE idempotency_key = ?", (proposed.idempotency_key,))
                self._count("key_forgotten")
                key = None  # forgotten: this request executes anew
            if key is not None:
                reference, error, operation, amount, currency, _ = key
                if (operation, amount, currency) != (proposed.operation.value, proposed.cent_amount, proposed.currency):
                    return Answer(reused=True)
                if error is not None:
                    return Answer(stored_error=error)
                self._db.execute("UPDATE executions SET calls = calls + 1 WHERE psp_reference = ?", (reference,))
                stored = self._find("psp_reference = ?", (reference,))
                assert stored is not None
                if stored.completes_at > now:
                    self._count("in_progress")
                    return Answer(execution=stored, in_progress=True)
                return Answer(execution=stored)
            executed = rules.judge(proposed, self)
            self._insert_key(proposed, executed.psp_reference, None, now)
            self._db.execute(
                f"INSERT INTO executions ({EXECUTION_COLUMNS}, executed_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (*_row(executed), now),
            )
            return Answer(execution=executed, new=True)

    def store_error(self, proposed: Execution, error: str, *, now: float, retention_s: float) -> bool:
        """The PSP fails on this request and remembers that answer for its key (unless the key is known);
        True when this request is the one that failed (not a replay)."""
        with _Immediate(self._db):
            self._db.execute(
                "DELETE FROM idempotency_keys WHERE idempotency_key = ? AND stored_at + ? <= ?",
                (proposed.idempotency_key, retention_s, now),
            )
            inserted = self._db.execute(
                "INSERT OR IGNORE INTO idempotency_keys VALUES (?,?,?,?,?,?,?)",
                (proposed.idempotency_key, None, error, proposed.operation.value, proposed.cent_amount, proposed.currency, now),
            )
            return inserted.rowcount == 1

    def latest_for(self, transaction_id: str, operation: Operation, *, now: float, retention_s: float) -> Execution | None:
        """The last execution of ``operation`` for a transaction, by any key (the PSP's search)."""
        with _Immediate(self._db):
            found = self._find(
                "transaction_id = ? AND operation = ? ORDER BY executed_at DESC LIMIT 1", (transaction_id, operation.value)
            )
            self._count("found" if found else "not_found")
            if found is not None:
                key = self._db.execute(
                    "SELECT stored_at FROM idempotency_keys WHERE idempotency_key = ?", (found.idempotency_key,)
                ).fetchone()
                if key is None or key[0] + retention_s <= now:
                    self._count("found_key_forgotten")  # a call with the key would have executed again
        return found

    def settle(self, reference: str, state: TransactionState, code: str, text: str) -> Execution:
        """A Pending execution decided since (the customer authenticated, the bank confirmed)."""
        with _Immediate(self._db):
            self._db.execute(
                "UPDATE executions SET state = ?, code = ?, text = ? WHERE psp_reference = ? AND state = ?",
                (state.value, code, text, reference, TransactionState.PENDING.value),
            )
            settled = self._find("psp_reference = ?", (reference,))
        assert settled is not None
        return settled

    def executions_on(self, target: str) -> list[Execution]:
        """The executions that address ``target`` (the captures and cancels of an authorization)."""
        rows = self._db.execute(f"SELECT {EXECUTION_COLUMNS} FROM executions WHERE target = ?", (target,)).fetchall()
        return [execution_from_row(row) for row in rows]

    def by_reference(self, reference: str) -> Execution | None:
        return self._find("psp_reference = ?", (reference,))

    def close(self) -> None:
        self._db.close()

    def _count(self, kind: str) -> None:
        self._db.execute("INSERT INTO answers VALUES (?, 1) ON CONFLICT (kind) DO UPDATE SET count = count + 1", (kind,))

    def _insert_key(self, proposed: Execution, reference: str | None, error: str | None, now: float) -> None:
        self._db.execute(
            "INSERT INTO idempotency_keys VALUES (?,?,?,?,?,?,?)",
            (proposed.idempotency_key, reference, error, proposed.operation.value, proposed.cent_amount, proposed.currency, now),
        )

    def _find(self, where: str, parameters: tuple[Any, ...]) -> Execution | None:
        row = self._db.execute(f"SELECT {EXECUTION_COLUMNS} FROM executions WHERE {where}", parameters).fetchone()
        return None if row is None else execution_from_row(row)


@dataclass(frozen=True, slots=True)
class Answer:
    """What the PSP makes of one request."""

    execution: Execution | None = None
    new: bool = False  # executed by this request
    in_progress: bool = False  # the key's first request is still running
    stored_error: str | None = None
    reused: bool = False  # the key was first used for another operation or amount


EXECUTION_COLUMNS = (
    "idempotency_key, operation, payment_id, transaction_id, cent_amount, currency, psp_reference, state, code, text, calls,"
    " completes_at, target"
)


def execution_from_row(row: tuple[Any, ...]) -> Execution:
    """An ``Execution`` from a row of ``EXECUTION_COLUMNS`` (the tests read the ledger with these too)."""
    key, operation, payment_id, transaction_id, amount, currency, reference, state, code, text, calls, completes, target = row
    return Execution(
        key, Operation(operation), payment_id, transaction_id, amount, currency, reference,
        TransactionState(state), code, text, calls, completes, target,
    )  # fmt: skip


def _row(e: Execution) -> tuple[Any, ...]:
    return (
        e.idempotency_key, e.operation.value, e.payment_id, e.transaction_id, e.cent_amount, e.currency,
        e.psp_reference, e.state.value, e.code, e.text, e.calls, e.completes_at, e.target,
    )  # fmt: skip


class _Immediate:
    """``BEGIN IMMEDIATE``: takes the write lock first, so two processes cannot both insert a key."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")


@dataclass(frozen=True, slots=True)
class CaptureRules:
    """The PSP's own checks of captures, cancels and refunds, judged inside the ledger's transaction."""

    multiple_captures: bool

    def judge(self, proposed: Execution, ledger: SandboxLedger) -> Execution:
        if proposed.operation is Operation.REFUND and proposed.target is not None:
            return self._judge_refund(proposed, ledger, proposed.target)
        if proposed.operation not in (Operation.CHARGE, Operation.CANCEL_AUTHORIZATION) or proposed.target is None:
            return proposed
        authorization = ledger.by_reference(proposed.target)
        if authorization is None or authorization.operation is not Operation.AUTHORIZE:
            return _refused(proposed, "no_such_authorization", "The sandbox made no authorization with this reference")
        if authorization.state is not TransactionState.SUCCESS:
            return _refused(proposed, "authorization_not_successful", "The authorization did not succeed")
        earlier = [e for e in ledger.executions_on(proposed.target) if e.state is not TransactionState.FAILURE]
        if any(e.operation is Operation.CANCEL_AUTHORIZATION for e in earlier):
            return _refused(proposed, "authorization_cancelled", "The authorization was cancelled")
        captures = [e for e in earlier if e.operation is Operation.CHARGE]
        if proposed.operation is Operation.CANCEL_AUTHORIZATION and captures:
            return _refused(proposed, "already_captured", "A captured authorization cannot be cancelled")
        if proposed.operation is Operation.CANCEL_AUTHORIZATION:
            return proposed
        if captures and not self.multiple_captures:
            return _refused(proposed, "already_captured", "The authorization was captured once already; the rest is released")
        if proposed.cent_amount + sum(e.cent_amount for e in captures) > authorization.cent_amount:
            return _refused(proposed, "amount_too_large", "The capture exceeds what the authorization holds")
        return proposed

    def _judge_refund(self, proposed: Execution, ledger: SandboxLedger, target: str) -> Execution:
        charge = ledger.by_reference(target)
        if charge is None or charge.operation is not Operation.CHARGE or charge.state is not TransactionState.SUCCESS:
            return _refused(proposed, "no_such_charge", "The sandbox made no successful charge with this reference")
        refunds = [e for e in ledger.executions_on(target) if e.state is not TransactionState.FAILURE]
        if proposed.cent_amount + sum(e.cent_amount for e in refunds) > charge.cent_amount:
            return _refused(proposed, "amount_too_large", "The refunds would exceed the charge")
        return proposed


def _refused(proposed: Execution, code: str, text: str) -> Execution:
    return replace(proposed, state=TransactionState.FAILURE, code=code, text=text)


SUCCESS_CODE = {
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
    code, text = SUCCESS_CODE[operation]
    return TransactionState.SUCCESS, code, text


class SandboxAdapter:
    def __init__(
        self,
        ledger: SandboxLedger,
        latency_ms: int = 0,
        *,
        key_retention_s: float = DAY_S,
        multiple_captures: bool = False,
        slow_ms: int = 0,
        timeout_ms: int | None = None,
        pending_settles_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ledger = ledger
        self._pending_settles_s = pending_settles_s
        self._latency_s = latency_ms / 1000
        self._slow_s = slow_ms / 1000 or self._latency_s
        self._timeout_s = None if timeout_ms is None else timeout_ms / 1000
        self._retention_s = key_retention_s
        self._rules = CaptureRules(multiple_captures)
        self._clock = clock
        # Declared as a real adapter does: its client's timeout (the PSP may work longer, as Stripe may),
        # else its latency with a second's margin for a busy event loop.
        declared = self._timeout_s if self._timeout_s is not None else max(self._latency_s, self._slow_s) + 1.0
        self.capabilities = Capabilities(
            multiple_captures=multiple_captures, request_timeout_s=declared, key_retention_s=key_retention_s
        )

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
        amount = request.transaction.amount
        state, code, text = simulate(operation, amount.cent_amount)
        now = self._clock()
        works_s = self._slow_s if amount.cent_amount % 100 == SLOW_ENDING else self._latency_s
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
            completes_at=now + works_s,
            target=_target_of(operation, request),
        )
        summary = _request_summary(operation, request)
        failed_now = amount.cent_amount % 100 == STORED_ERROR_ENDING and self._ledger.store_error(
            proposed, "500 api_error", now=now, retention_s=self._retention_s
        )  # the first call fails; later ones replay it
        answer = self._ledger.submit(proposed, now=now, retention_s=self._retention_s, rules=self._rules)
        if answer.reused:  # as the Stripe adapter does: the key's first request may have moved money
            raise PermanentError("the sandbox refused the idempotency key: it was first used for another operation or amount")
        if answer.stored_error is not None and failed_now:
            raise PspUnavailable(f"the sandbox failed on this request ({answer.stored_error})")
        if answer.stored_error is not None:
            raise PspStoredError(f"the sandbox replays the error stored for this key ({answer.stored_error})")
        if answer.in_progress:
            raise PspRequestInProgress("the sandbox is still running a request with this idempotency key")
        executed = answer.execution
        assert executed is not None
        if answer.new and works_s:
            # The PSP at work; it finishes even if this caller gives up, or times out.
            await asyncio.sleep(works_s if self._timeout_s is None else min(works_s, self._timeout_s))
            if self._timeout_s is not None and works_s > self._timeout_s:
                raise PspUnavailable("the sandbox did not answer within the caller's timeout")
        if amount.cent_amount % 100 == LOST_ANSWER_ENDING and answer.new:
            raise PspUnavailable("the sandbox executed the operation and then timed out before answering")
        return _outcome(executed, summary)

    async def find(self, request: OperationRequest) -> Outcome | None:
        """What the sandbox did for ``request.transaction``, whatever key it was asked with."""
        operation = OPERATION_FOR[request.transaction.type]
        executed = self._ledger.latest_for(request.transaction.id, operation, now=self._clock(), retention_s=self._retention_s)
        if executed is None:
            return None
        if executed.completes_at > self._clock():
            raise PspRequestInProgress("the sandbox is still executing this transaction")
        return _outcome(self._current(executed), _request_summary(operation, request))

    def _current(self, executed: Execution) -> Execution:
        """The execution as the PSP shows it now: a Pending one settles once ``pending_settles_s`` passed."""
        settles_at = None if self._pending_settles_s is None else executed.completes_at + self._pending_settles_s
        if executed.state is TransactionState.PENDING and settles_at is not None and settles_at <= self._clock():
            code, text = SUCCESS_CODE[executed.operation]  # what a customer's authentication or a bank's confirmation decided
            return self._ledger.settle(executed.psp_reference, TransactionState.SUCCESS, code, text)
        return executed


class _SandboxWithNotifications(SandboxAdapter):
    """The sandbox taking notifications, signed with its route's ``webhook_secret``."""

    def __init__(self, *args: Any, webhook_secret: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._webhook_secret = webhook_secret

    def parse_notification(self, body: bytes, headers: Mapping[str, str]) -> Notice | None:
        return sandbox_notifications.parse(body, headers, self._webhook_secret, self._clock())

    async def look_up(self, notice: Notice) -> PspState | None:
        executed = self._ledger.by_reference(notice.object_id)
        if executed is None:
            return None
        return PspState(executed.payment_id, None, {"execution": self._current(executed)})

    def findings(self, state: PspState, payment: Payment) -> tuple[Finding, ...]:
        return sandbox_notifications.findings(state)


class _SandboxWithoutFind(SandboxAdapter):
    """The sandbox without the optional find operation: an adapter that relies on its keys alone."""

    find = None  # type: ignore[assignment]


def _outcome(executed: Execution, summary: dict[str, Any]) -> Outcome:
    response = {"reference": executed.psp_reference, "state": executed.state.value, "code": executed.code}
    return Outcome(executed.state, executed.psp_reference, executed.code, executed.text, summary, response)


def _target_of(operation: Operation, request: OperationRequest) -> str | None:
    """The earlier execution this one addresses: the authorization a Charge captures or a cancel voids
    (a Charge on a payment with an Authorization is its capture), the charge a Refund pays back."""
    transactions = request.payment.transactions
    if operation is Operation.REFUND:
        charges = [t for t in transactions if t.type is TransactionType.CHARGE and t.state is TransactionState.SUCCESS]
        return next((t.interaction_id for t in charges if t.interaction_id), "none")
    if operation not in (Operation.CHARGE, Operation.CANCEL_AUTHORIZATION):
        return None
    authorizations = [t for t in transactions if t.type is TransactionType.AUTHORIZATION]
    if not authorizations:
        return None  # a direct charge
    return next((t.interaction_id or "none" for t in authorizations if t.state is TransactionState.SUCCESS), "none")


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
    if parsed.webhook_secret and not parsed.find_executions:
        raise ValueError("webhook_secret needs find_executions: a notice is applied by looking the execution up")
    options: dict[str, Any] = {
        "latency_ms": parsed.latency_ms, "key_retention_s": parsed.key_retention_s,
        "multiple_captures": parsed.multiple_captures, "slow_ms": parsed.slow_ms, "timeout_ms": parsed.timeout_ms,
        "pending_settles_s": parsed.pending_settles_s,
    }  # fmt: skip
    ledger = SandboxLedger(parsed.ledger_path)
    if parsed.webhook_secret:
        return _SandboxWithNotifications(ledger, webhook_secret=parsed.webhook_secret, **options)
    return (SandboxAdapter if parsed.find_executions else _SandboxWithoutFind)(ledger, **options)
