"""The sandbox PSP simulator: outcome rules and idempotency keys, shared through its ledger."""

import asyncio
import multiprocessing
import multiprocessing.synchronize
from pathlib import Path

import pytest

from connector.adapters.contract import Operation, OperationRequest
from connector.adapters.sandbox import SandboxAdapter, SandboxLedger, create_adapter, simulate
from connector.errors import PermanentError, PspRequestInProgress, PspStoredError, PspUnavailable
from connector.models.payment import Payment, TransactionState
from tests.sandbox_ledger import executions


def request(amount: int, key: str = "key-1", kind: str = "Charge") -> OperationRequest:
    payment = Payment.model_validate({
        "id": "pay-1", "version": 1, "amountPlanned": {"centAmount": amount, "currencyCode": "EUR"},
        "paymentMethodInfo": {"paymentInterface": "sandbox", "token": {"value": "pm_card_visa_4242424242"}},
        "transactions": [
            {"id": "tx-1", "type": kind, "amount": {"centAmount": amount, "currencyCode": "EUR"}, "state": "Initial"}
        ],
    })  # fmt: skip
    return OperationRequest(payment, payment.transactions[0], key, "proj")


@pytest.mark.parametrize(
    ("operation", "amount", "state", "code"),
    [
        (Operation.AUTHORIZE, 1000, TransactionState.SUCCESS, "authorized"),
        (Operation.AUTHORIZE, 1013, TransactionState.FAILURE, "card_declined"),
        (Operation.CHARGE, 2013, TransactionState.FAILURE, "card_declined"),
        (Operation.REFUND, 2013, TransactionState.SUCCESS, "refunded"),
        (Operation.CHARGE, 1042, TransactionState.PENDING, "pending"),
        (Operation.CANCEL_AUTHORIZATION, 500, TransactionState.SUCCESS, "cancelled"),
    ],
)
def test_outcome_rules(operation: Operation, amount: int, state: TransactionState, code: str) -> None:
    """Amounts ending in 13 decline authorizations and charges; ending in 42 stay pending."""
    assert simulate(operation, amount)[:2] == (state, code)


async def test_a_repeated_key_executes_once(tmp_path: Path) -> None:
    """The same idempotency key returns the first outcome and only counts the call."""
    adapter = create_adapter({"ledger_path": str(tmp_path / "ledger.sqlite")})
    first = await adapter.charge(request(1000))
    second = await adapter.charge(request(1000))
    await adapter.aclose()
    assert first == second and first.psp_reference
    [execution] = executions(tmp_path / "ledger.sqlite")
    assert (execution.calls, execution.idempotency_key, execution.transaction_id) == (2, "key-1", "tx-1")


async def test_a_reused_key_with_other_terms_is_refused(tmp_path: Path) -> None:
    """A key reused for another amount is refused, as real PSPs do, and executes nothing new; not as a
    Failure, since the key's first request moved money."""
    adapter = SandboxAdapter(SandboxLedger(tmp_path / "l.sqlite"))
    await adapter.charge(request(1000))
    with pytest.raises(PermanentError, match="idempotency key"):
        await adapter.charge(request(999))
    assert len(executions(tmp_path / "l.sqlite")) == 1


async def test_the_payment_method_is_masked_in_summaries(tmp_path: Path) -> None:
    """The request summary shows only the last characters of the payment method token."""
    adapter = SandboxAdapter(SandboxLedger(tmp_path / "l.sqlite"))
    outcome = await adapter.authorize(request(1000, kind="Authorization"))
    assert outcome.request["paymentMethod"] == "***4242"
    assert "pm_card_visa" not in repr(outcome)


def test_settings_are_validated() -> None:
    """Unknown or invalid sandbox settings are refused when the adapter is built."""
    with pytest.raises(ValueError, match="latency_ms"):
        create_adapter({"latency_ms": -1})
    with pytest.raises(ValueError, match="colour"):
        create_adapter({"colour": "blue"})


async def test_a_lost_answer_is_recovered_by_retrying_with_the_same_key(tmp_path: Path) -> None:
    """Amounts ending in 77 execute and then time out; the retry with the same key gets the outcome."""
    adapter = SandboxAdapter(SandboxLedger(tmp_path / "l.sqlite"))
    with pytest.raises(PspUnavailable):
        await adapter.charge(request(1077))
    outcome = await adapter.charge(request(1077))
    [execution] = executions(tmp_path / "l.sqlite")
    assert outcome.state is TransactionState.SUCCESS and outcome.psp_reference == execution.psp_reference
    assert execution.calls == 2


def _open_ledger(path: str, start: "multiprocessing.synchronize.Barrier") -> None:
    start.wait(timeout=30)
    SandboxLedger(path).close()


def test_workers_starting_together_all_open_a_new_ledger(tmp_path: Path) -> None:
    """Two workers of one test start at the same moment on a new ledger file: every one of them opens it
    (SQLite answered the WAL switch of all but the first with "database is locked", and a worker died)."""
    context = multiprocessing.get_context("forkserver")  # children of a process without threads
    for round_ in range(20):
        start = context.Barrier(4)
        processes = [context.Process(target=_open_ledger, args=(str(tmp_path / f"{round_}.sqlite"), start)) for _ in range(4)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
        assert [p.exitcode for p in processes] == [0, 0, 0, 0]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def authorized_then(kind: str, amount: int, reference: str, key: str) -> OperationRequest:
    """A request for a ``kind`` transaction after a successful Authorization of 1000 known as ``reference``."""
    payment = Payment.model_validate({
        "id": "pay-1", "version": 1, "amountPlanned": {"centAmount": 1000, "currencyCode": "EUR"},
        "transactions": [
            {"id": "tx-a", "type": "Authorization", "amount": {"centAmount": 1000, "currencyCode": "EUR"}, "state": "Success",
             "interactionId": reference},
            {"id": f"tx-{key}", "type": kind, "amount": {"centAmount": amount, "currencyCode": "EUR"}, "state": "Initial"},
        ],
    })  # fmt: skip
    return OperationRequest(payment, payment.transactions[1], key, "proj")


async def test_a_key_in_flight_is_answered_in_progress_and_its_request_runs_on(tmp_path: Path) -> None:
    """Stripe's 409 idempotency_key_in_use: a second request while the first runs learns nothing and
    executes nothing; the first runs to its end even when its caller gives up."""
    path, clock = tmp_path / "l.sqlite", Clock()
    first = SandboxAdapter(SandboxLedger(path), latency_ms=5000, clock=clock)
    second = SandboxAdapter(SandboxLedger(path), latency_ms=5000, clock=clock)
    running = asyncio.create_task(first.charge(request(1000)))
    async with asyncio.timeout(5):
        while not executions(path):  # the first request has reached the PSP
            await asyncio.sleep(0.01)
    with pytest.raises(PspRequestInProgress):
        await second.charge(request(1000))
    with pytest.raises(PspRequestInProgress):
        await second.find(request(1000))
    running.cancel()  # the caller gives up; the PSP does not
    with pytest.raises(asyncio.CancelledError):
        await running
    clock.now += 5
    outcome = await second.charge(request(1000))
    [execution] = executions(path)
    assert outcome.state is TransactionState.SUCCESS and outcome.psp_reference == execution.psp_reference


async def test_a_stored_server_error_is_replayed_for_its_key(tmp_path: Path) -> None:
    """Amounts ending in 55: the first answer is a 500 the PSP keeps for the key; retrying cannot help,
    and the replays say so (poison, not an outage)."""
    adapter = SandboxAdapter(SandboxLedger(tmp_path / "l.sqlite"))
    with pytest.raises(PspUnavailable, match="failed on this request"):
        await adapter.charge(request(1055))
    for _ in range(2):
        with pytest.raises(PspStoredError, match="replays the error"):
            await adapter.charge(request(1055))
    assert executions(tmp_path / "l.sqlite") == []


async def test_a_forgotten_key_executes_again_and_find_still_knows(tmp_path: Path) -> None:
    """After the key retention the same key is a new request: a second execution. find answers by
    transaction, whatever the keys, which is how the connector avoids that second execution."""
    clock = Clock()
    adapter = SandboxAdapter(SandboxLedger(tmp_path / "l.sqlite"), key_retention_s=60, clock=clock)
    assert await adapter.find(request(1000)) is None
    first = await adapter.charge(request(1000))
    clock.now += 59
    assert (await adapter.charge(request(1000))).psp_reference == first.psp_reference
    found = await adapter.find(request(1000))
    assert found is not None and found.psp_reference == first.psp_reference
    clock.now += 2
    again = await adapter.charge(request(1000))
    assert again.psp_reference != first.psp_reference
    assert [e.transaction_id for e in executions(tmp_path / "l.sqlite")] == ["tx-1", "tx-1"]


async def test_an_authorization_is_captured_once_within_its_amount(tmp_path: Path) -> None:
    """Stripe captures a PaymentIntent once and releases the rest; more than authorized is refused, and a
    capture must name an authorization the PSP made. With multi-capture declared, the rest may follow."""
    single = SandboxAdapter(SandboxLedger(tmp_path / "single.sqlite"))
    reference = (await single.authorize(request(1000, key="auth", kind="Authorization"))).psp_reference
    assert reference
    assert (await single.charge(authorized_then("Charge", 400, reference, "c1"))).state is TransactionState.SUCCESS
    second = await single.charge(authorized_then("Charge", 100, reference, "c2"))
    assert (second.state, second.code) == (TransactionState.FAILURE, "already_captured")
    unknown = await single.charge(authorized_then("Charge", 100, "sbx_unknown", "c3"))
    assert unknown.code == "no_such_authorization"
    multi = SandboxAdapter(SandboxLedger(tmp_path / "multi.sqlite"), multiple_captures=True)
    reference = (await multi.authorize(request(1000, key="auth", kind="Authorization"))).psp_reference
    assert reference and multi.capabilities.multiple_captures
    assert (await multi.charge(authorized_then("Charge", 400, reference, "c1"))).state is TransactionState.SUCCESS
    assert (await multi.charge(authorized_then("Charge", 600, reference, "c2"))).state is TransactionState.SUCCESS
    assert (await multi.charge(authorized_then("Charge", 1, reference, "c3"))).code == "amount_too_large"
