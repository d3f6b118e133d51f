"""What a PSP notice changes on a payment, decided from data alone (docs/design.md, 'PSP notifications').

The adapter says what the PSP's current state means for the payment's transactions (``Finding``);
``plan_notice`` turns that into one update, under the protocol's rules:
- once per event: a payment that shows the event's interaction already gets nothing (a duplicate);
- fenced: a finding about an Initial transaction a worker holds a fresh claim on waits for that
  claim (its own outcome is on its way); one with a stale claim, or none, is settled as a takeover's
  look-up would settle it;
- forward only: Initial < Pending < Success | Failure, except ``reverses_success`` (Success to Failure,
  a refund the PSP failed after it succeeded);
- the PSP's own transactions (a Chargeback, a CancelAuthorization by expiry) are added once, and found
  again by their PSP reference;
- every change comes with a ``notification`` interaction naming the event, its type and the PSP object;
- where the PSP disagrees with what the payment shows (it says Success of a transaction stored as
  Failure: a customer who retried a failed 3-D Secure with another card; or the transaction holds
  another PSP reference than the object's), nothing is changed: the disagreement is recorded once as
  an interaction and returned, for an operator (``notice.psp_disagrees``).
"""

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from connector.adapters.contract import Finding
from connector.models.notice import Notice
from connector.models.payment import Payment, Transaction, TransactionState
from connector.processor.decisions import Action, clip, idempotency_key, latest_claims, payment_status_code, summary_json

NOTIFICATION = "notification"


@dataclass(frozen=True, slots=True)
class NoticePlan:
    actions: list[Action] = field(default_factory=list)
    held_until: datetime | None = None  # a transaction it settles is claimed by a worker until then
    unmatched: str | None = None  # why the notice cannot be matched to the payment yet
    disagreements: tuple[str, ...] = ()  # what the PSP shows otherwise than the payment, for an operator


def plan_notice(
    payment: Payment,
    notice: Notice,
    interface: str,
    findings: Sequence[Finding],
    *,
    type_key: str,
    now: datetime,
    lease: timedelta,
) -> NoticePlan:
    if applied(payment, notice.event_id):
        return NoticePlan()
    claims = latest_claims(payment)
    actions: list[Action] = []
    settled: dict[str, TransactionState] = {}
    added: list[Transaction] = []
    disagreements: list[str] = []
    last: Finding | None = None
    for finding in findings:
        if finding.record is not None:
            if not _recorded(payment, finding):
                actions.append(_interaction(type_key, notice, interface, finding, now, record=True))
            continue
        current = _matched(payment, finding)
        if current is None and finding.transaction_id is not None:
            return NoticePlan(
                unmatched=f"transaction {finding.transaction_id} named by {finding.psp_reference} is not on the payment"
            )
        if current is None:
            if finding.amount is None:
                continue  # nothing to add it with: the adapter names no amount
            actions.append(_add_transaction(finding, now))
            actions.append(_interaction(type_key, notice, interface, finding, now))
            added.append(
                Transaction(id=f"new:{finding.psp_reference}", type=finding.type, amount=finding.amount, state=finding.state)
            )
            last = finding
            continue
        if current.state is TransactionState.INITIAL:
            claim = claims.get(idempotency_key(current.id, current.type))
            if claim is not None and (until := claim.at + max(lease, claim.lease)) > now:
                return NoticePlan(held_until=until)
        if (disagreement := disagrees(current, finding)) is not None:
            disagreements.append(disagreement)
            noted = replace(finding, record=f"disagrees:{finding.state.value}", text=f"{disagreement}; left as it is")
            if not _recorded(payment, noted):
                actions.append(_interaction(type_key, notice, interface, noted, now, transaction_id=current.id, record=True))
            continue
        if not moves(current.state, finding):
            continue
        actions.append({"action": "changeTransactionState", "transactionId": current.id, "state": finding.state.value})
        if current.interaction_id != finding.psp_reference and not current.interaction_id:
            actions.append(
                {"action": "changeTransactionInteractionId", "transactionId": current.id, "interactionId": finding.psp_reference}
            )
        actions.append(_interaction(type_key, notice, interface, finding, now, transaction_id=current.id))
        settled[current.id] = finding.state
        last = finding
    if last is not None:
        after = payment.model_copy(update={"transactions": (*payment.transactions, *added)})
        actions.append({"action": "setStatusInterfaceCode", "interfaceCode": payment_status_code(after, settled)})
        actions.append({"action": "setStatusInterfaceText", "interfaceText": clip(f"{last.code}: {last.text}")})
    return NoticePlan(actions, disagreements=tuple(disagreements))


def disagrees(current: Transaction, finding: Finding) -> str | None:
    """Why the PSP's object cannot speak for this transaction, or None when it can."""
    if current.interaction_id and current.interaction_id != finding.psp_reference:
        held = current.interaction_id
        return f"transaction {current.id} holds PSP reference {held}, the notice's object is {finding.psp_reference}"
    final = (TransactionState.SUCCESS, TransactionState.FAILURE)
    if (
        current.state in final
        and finding.state in final
        and current.state is not finding.state
        and not moves(current.state, finding)
    ):
        return f"the PSP shows {finding.state.value} for transaction {current.id}, stored as {current.state.value}"
    return None


def moves(state: TransactionState, finding: Finding) -> bool:
    """Whether ``finding`` moves a transaction in ``state``: forward, or a documented move back (what the PSP undid later)."""
    if finding.state.rank > state.rank:
        return True
    return state is TransactionState.SUCCESS and finding.state is TransactionState.FAILURE and finding.reverses_success


def applied(payment: Payment, event_id: str) -> bool:
    """Whether the payment shows this event's interaction: it was applied before (this is a duplicate)."""
    return any(_is_notification(i.fields) and i.fields.get("eventId") == event_id for i in payment.interface_interactions)


def _recorded(payment: Payment, finding: Finding) -> bool:
    key = _record_key(finding)
    return any(_is_notification(i.fields) and i.fields.get("idempotencyKey") == key for i in payment.interface_interactions)


def _is_notification(fields: dict[str, Any]) -> bool:
    return fields.get("type") == NOTIFICATION


def _record_key(finding: Finding) -> str:
    return f"{finding.psp_reference}:{finding.record}"


def _matched(payment: Payment, finding: Finding) -> Transaction | None:
    if finding.transaction_id is not None:
        return payment.transaction(finding.transaction_id)
    return next((t for t in payment.transactions if t.type is finding.type and t.interaction_id == finding.psp_reference), None)


def _add_transaction(finding: Finding, now: datetime) -> Action:
    assert finding.amount is not None
    return {
        "action": "addTransaction",
        "transaction": {
            "type": finding.type.value,
            "amount": {"centAmount": finding.amount.cent_amount, "currencyCode": finding.amount.currency_code},
            "state": finding.state.value,
            "interactionId": finding.psp_reference,
            "timestamp": _iso(now),
        },
    }


def _interaction(
    type_key: str,
    notice: Notice,
    interface: str,
    finding: Finding,
    now: datetime,
    *,
    transaction_id: str | None = None,
    record: bool = False,
) -> Action:
    fields: dict[str, Any] = {
        "type": NOTIFICATION,
        "eventId": notice.event_id,
        "operation": notice.event_type,
        "interactionId": finding.psp_reference,
        "createdAt": _iso(now),
        "request": clip(summary_json({"interface": interface, "eventId": notice.event_id, "eventType": notice.event_type,
                                "objectId": notice.object_id})),
        "response": clip(summary_json({"transactionType": finding.type.value, "state": finding.state.value, "code": finding.code,
                                 "text": finding.text})),
    }  # fmt: skip
    if transaction_id is not None or finding.transaction_id is not None:
        fields["transactionId"] = transaction_id or finding.transaction_id
    if record:
        fields["idempotencyKey"] = _record_key(finding)
    return {"action": "addInterfaceInteraction", "type": {"typeId": "type", "key": type_key}, "fields": fields}


def _iso(now: datetime) -> str:
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
