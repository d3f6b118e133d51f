"""What to do with a payment, decided from data alone: no I/O, no clock (``now`` is passed in).

The protocol (docs/design.md, 'Processing protocol') in terms of these functions:
1. ``plan_work``: the Initial transactions to execute, unless another worker's claim is still fresh.
2. ``claim_actions``: one update that adds a ``request`` interaction per transaction (the claim).
3. For each claimed transaction, in payment order: ``money.refusal_for`` (the money rules, checked
   before any PSP call) or the PSP call; ``apply_outcome`` lets later transactions see its outcome.
4. ``outcome_actions``: the update that stores an outcome, written before the next transaction is
   executed. On a 409 it is recomputed from the refetched payment, and states only ever move forward.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

import orjson

from connector.adapters.contract import OPERATION_FOR, Operation, Outcome
from connector.models.payment import Payment, Transaction, TransactionState, TransactionType
from connector.processor.money import NOTHING_SETTLED, Totals

MAX_INTERACTION_TEXT = 4000

Action = dict[str, Any]
NO_CLAIMS: Mapping[str, str] = MappingProxyType({})
MAX_LEASE_S = 86_400.0  # a claim's lease is read up to a day; the setting allows no more


@dataclass(frozen=True, slots=True)
class Work:
    """A transaction the connector owes an outcome to."""

    transaction: Transaction
    operation: Operation
    idempotency_key: str
    claimed_before: bool = False  # a claim of an earlier attempt exists: ask the PSP before executing
    first_claimed_at: datetime | None = None  # the earliest claim: from then on the PSP may have had the key


@dataclass(frozen=True, slots=True)
class Plan:
    work: tuple[Work, ...]
    held_until: datetime | None  # a transaction is claimed by someone else until then

    @property
    def needs_payment_method(self) -> bool:
        """Authorizations and direct charges need the token, which messages carry masked."""
        return any(w.operation is Operation.AUTHORIZE or w.operation is Operation.CHARGE for w in self.work)


@dataclass(frozen=True, slots=True)
class Result:
    work: Work
    outcome: Outcome


def idempotency_key(transaction_id: str, transaction_type: TransactionType) -> str:
    """The same for every attempt at a transaction, by any worker: the PSP executes it once."""
    return f"{transaction_id}-{transaction_type.value}"


def plan_work(payment: Payment, *, now: datetime, lease: timedelta, abandoned: Mapping[str, str] = NO_CLAIMS) -> Plan:
    """``abandoned``: keys this worker claimed in an attempt that has ended (with that attempt's id), with
    no call of its own still running; it may take such a key back at once while its claim is the latest."""
    claims = latest_claims(payment)
    work: list[Work] = []
    held_until: datetime | None = None
    for transaction in payment.transactions:
        if transaction.state is not TransactionState.INITIAL or is_issuer_record(transaction):
            continue
        key = idempotency_key(transaction.id, transaction.type)
        claim = claims.get(key)
        if claim is not None and (claim.attempt is None or abandoned.get(key) != claim.attempt):
            # The longer of the two leases: the claimant's own (its settings may differ, during a
            # rollout say) and this worker's.
            until = claim.at + max(lease, claim.lease)
            if until > now:
                held_until = max(held_until or until, until)
        first = claim.first_at if claim is not None else None
        work.append(
            Work(transaction, OPERATION_FOR[transaction.type], key, claimed_before=claim is not None, first_claimed_at=first)
        )
    if held_until is not None:
        return Plan((), held_until)
    return Plan(tuple(work), None)


@dataclass(frozen=True, slots=True)
class Sweep:
    """What the reconciler finds to do on a payment no delivery may come for (connector.reconciler)."""

    initial: bool  # Initial transactions with no claim, or only stale ones: run the protocol on them
    pending: tuple[Transaction, ...]  # Pending long enough to ask the PSP what became of them
    claimed_too_often: bool = False  # left for an operator: the protocol kept failing on it

    @property
    def needed(self) -> bool:
        return self.initial or bool(self.pending)


def sweep_of(payment: Payment, *, now: datetime, lease: timedelta, pending_age: timedelta, max_claims: int = 5) -> Sweep:
    """A fresh claim means a worker is on it: left alone, whatever the reconciler found. A transaction
    claimed ``max_claims`` times and still Initial keeps failing (a permanent refusal each time): driving
    it again every sweep would add a claim each time, and keep the payment in the window for ever."""
    plan = plan_work(payment, now=now, lease=lease)
    claims = _claim_counts(payment)
    too_often = any(claims.get(work.idempotency_key, 0) >= max_claims for work in plan.work)
    pending = tuple(
        t
        for t in payment.transactions
        if t.state is TransactionState.PENDING
        and not is_issuer_record(t)
        and (since := pending_since(payment, t)) is not None
        and since <= now - pending_age
    )
    return Sweep(initial=bool(plan.work) and not too_often, pending=pending, claimed_too_often=too_often)


def _claim_counts(payment: Payment) -> dict[str, int]:
    counts: dict[str, int] = {}
    for interaction in payment.interface_interactions:
        fields = interaction.fields
        if fields.get("type") == "request" and isinstance(key := fields.get("idempotencyKey"), str):
            counts[key] = counts.get(key, 0) + 1
    return counts


def pending_since(payment: Payment, transaction: Transaction) -> datetime | None:
    """When the transaction's Pending outcome was stored (its latest response), else when the payment
    last changed (a Pending written by someone else); None when neither says."""
    latest: datetime | None = None
    key = idempotency_key(transaction.id, transaction.type)
    for interaction in payment.interface_interactions:
        fields = interaction.fields
        if fields.get("type") != "response" or fields.get("idempotencyKey") != key:
            continue
        at = parse_time(fields.get("createdAt"))
        if at is not None and (latest is None or at > latest):
            latest = at
    return latest or parse_time(payment.last_modified_at)


def parse_time(value: object) -> datetime | None:
    """An ISO 8601 time, or None when ``value`` is none."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def is_issuer_record(transaction: Transaction) -> bool:
    """A Chargeback is the card issuer's record of money taken back: never claimed, executed or written."""
    return transaction.type is TransactionType.CHARGEBACK


def awaits_only_the_issuer(payment: Payment) -> bool:
    """Nothing for the connector: the payment's only Initial transactions are issuer records."""
    initial = [t for t in payment.transactions if t.state is TransactionState.INITIAL]
    return bool(initial) and all(is_issuer_record(t) for t in initial)


def claim_actions(work: Iterable[Work], *, type_key: str, now: datetime, lease: timedelta, attempt: str) -> list[Action]:
    """The claim: a ``request`` interaction per transaction, created ``now``, with the claimant's lease
    (which other workers honour if it is longer than theirs) and the id of the claiming attempt (by
    which a worker knows its own claim)."""
    return [
        _interaction(
            type_key,
            kind="request",
            work=w,
            now=now,
            request={
                "operation": w.operation.value,
                "amount": w.transaction.amount.cent_amount,
                "currency": w.transaction.amount.currency_code,
                "leaseS": lease.total_seconds(),
                "attempt": attempt,
            },
        )
        for w in work
    ]


def apply_outcome(payment: Payment, transaction_id: str, outcome: Outcome) -> Payment:
    """The payment as it will be once ``outcome`` is stored (for the next transaction's checks)."""
    transactions = tuple(
        t.model_copy(update={"state": outcome.state, "interaction_id": outcome.psp_reference or t.interaction_id})
        if t.id == transaction_id and t.state.rank < outcome.state.rank
        else t
        for t in payment.transactions
    )
    return payment.model_copy(update={"transactions": transactions})


def outcome_actions(
    payment: Payment, results: Sequence[Result], *, type_key: str, now: datetime, essential_only: bool = False
) -> list[Action]:
    """One update that stores every outcome the payment does not already show.

    A transaction that someone else moved to a final state meanwhile keeps it (states move
    forward only); the same PSP call under the same key cannot have said anything else.
    ``essential_only``: the state and the PSP reference alone, for when commercetools refused the rest.
    """
    actions: list[Action] = []
    settled: dict[str, TransactionState] = {}
    last: Outcome | None = None
    for result in results:
        current = payment.transaction(result.work.transaction.id)
        if current is None or current.state.rank >= result.outcome.state.rank:
            continue
        transaction_id = current.id
        outcome = result.outcome
        actions.append({"action": "changeTransactionState", "transactionId": transaction_id, "state": outcome.state.value})
        if outcome.psp_reference:
            actions.append(
                {
                    "action": "changeTransactionInteractionId",
                    "transactionId": transaction_id,
                    "interactionId": outcome.psp_reference,
                }
            )
        settled[transaction_id] = outcome.state
        last = outcome
        if essential_only:
            continue
        actions.append(
            _interaction(
                type_key, kind="response", work=result.work, now=now, request=dict(outcome.request),
                response={"state": outcome.state.value, "code": outcome.code, "text": outcome.text, **outcome.response},
                interaction_id=outcome.psp_reference,
            )
        )  # fmt: skip
    if last is not None and not essential_only:
        actions.append({"action": "setStatusInterfaceCode", "interfaceCode": payment_status_code(payment, settled)})
        actions.append({"action": "setStatusInterfaceText", "interfaceText": clip(f"{last.code}: {last.text}")})
    return actions


def payment_status_code(payment: Payment, settled: Mapping[str, TransactionState] = NOTHING_SETTLED) -> str:
    """The PSP's view of the whole payment, in the generic payments vocabulary.

    ``settled``: new states of some transactions (by id), not stored yet.
    """
    totals = Totals.of(payment, settled)
    states = [settled.get(t.id, t.state) for t in payment.transactions]
    succeeded = {t.type for t, state in zip(payment.transactions, states, strict=True) if state is TransactionState.SUCCESS}
    if TransactionType.REFUND in succeeded:
        return "refunded" if totals.refunded >= totals.charged else "partial_refund"
    if TransactionType.CHARGE in succeeded:
        return "captured"
    if TransactionType.CANCEL_AUTHORIZATION in succeeded:
        return "cancelled"
    if TransactionType.AUTHORIZATION in succeeded:
        return "reserved"
    if TransactionState.PENDING in states:
        return "processing"
    if states and all(s is TransactionState.FAILURE for s in states):
        return "failed"
    return "created"


@dataclass(frozen=True, slots=True)
class _Claim:
    at: datetime
    lease: timedelta  # the claimant's; zero when the claim does not say
    attempt: str | None  # the claiming attempt's id
    first_at: datetime  # the key's earliest claim


def latest_claims(payment: Payment) -> dict[str, _Claim]:
    """The latest claim of each idempotency key, from the payment's request interactions."""
    claims: dict[str, _Claim] = {}
    for interaction in payment.interface_interactions:
        fields = interaction.fields
        key, created_at = fields.get("idempotencyKey"), fields.get("createdAt")
        if fields.get("type") != "request" or not isinstance(key, str) or not isinstance(created_at, str):
            continue
        try:
            at = datetime.fromisoformat(created_at)
        except ValueError:
            continue
        earlier = claims.get(key)
        if earlier is None or at >= earlier.at:
            claims[key] = _claim(at, fields.get("request"), first_at=min(at, earlier.first_at) if earlier else at)
        elif at < earlier.first_at:
            claims[key] = replace(earlier, first_at=at)
    return claims


def _claim(at: datetime, request: object, *, first_at: datetime) -> _Claim:
    """A claim from its time and its ``request`` summary (JSON with the claimant's lease and attempt)."""
    try:
        summary = orjson.loads(request) if isinstance(request, str) else None
    except orjson.JSONDecodeError:
        summary = None
    if not isinstance(summary, dict):
        return _Claim(at, timedelta(0), None, first_at)
    lease, attempt = summary.get("leaseS"), summary.get("attempt")
    if not isinstance(lease, int | float) or isinstance(lease, bool) or not 0 < lease <= MAX_LEASE_S:
        lease = 0
    return _Claim(at, timedelta(seconds=lease), attempt if isinstance(attempt, str) else None, first_at)


def _interaction(
    type_key: str,
    *,
    kind: str,
    work: Work,
    now: datetime,
    request: dict[str, Any],
    response: dict[str, Any] | None = None,
    interaction_id: str | None = None,
) -> Action:
    fields: dict[str, Any] = {
        "type": kind,
        "transactionId": work.transaction.id,
        "idempotencyKey": work.idempotency_key,
        "createdAt": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "request": clip(summary_json(request)),
    }
    fields["operation"] = work.operation.value
    if response is not None:
        fields["response"] = clip(summary_json(response))
    if interaction_id:
        fields["interactionId"] = interaction_id
    return {"action": "addInterfaceInteraction", "type": {"typeId": "type", "key": type_key}, "fields": fields}


def summary_json(summary: dict[str, Any]) -> str:
    return orjson.dumps(summary, option=orjson.OPT_SORT_KEYS).decode()


def clip(text: str) -> str:
    return text if len(text) <= MAX_INTERACTION_TEXT else text[: MAX_INTERACTION_TEXT - 1] + "…"
