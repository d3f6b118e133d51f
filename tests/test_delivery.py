"""Parsing subscription deliveries in both formats."""

import json

import pytest

from connector.errors import BadDelivery
from connector.models.delivery import Ignored, PaymentTrigger, parse_delivery
from tests.stack import messages

PAYMENT = {
    "id": "pay-1",
    "version": 3,
    "amountPlanned": {"centAmount": 1000, "currencyCode": "EUR"},
    "paymentMethodInfo": {"paymentInterface": "sandbox", "token": {"value": "pm_secret_token"}},
    "transactions": [{"id": "tx-1", "type": "Charge", "amount": {"centAmount": 1000, "currencyCode": "EUR"}, "state": "Initial"}],
    "someFieldFromTheFuture": {"x": 1},
}


@pytest.mark.parametrize("fmt", ["platform", "cloudevents"])
def test_payment_created_carries_the_payment(fmt: messages.Format) -> None:
    """A PaymentCreated delivery triggers its payment and carries it, token masked."""
    trigger = parse_delivery(messages.payment_created("proj", PAYMENT, fmt))
    assert isinstance(trigger, PaymentTrigger)
    assert (trigger.payment_id, trigger.message_type, trigger.resource_version) == ("pay-1", "PaymentCreated", 3)
    assert trigger.payment is not None and trigger.payment.transactions[0].id == "tx-1"
    assert trigger.payment.payment_method_info.token is not None
    assert trigger.payment.payment_method_info.token.value == messages.MASKED


@pytest.mark.parametrize("fmt", ["platform", "cloudevents"])
def test_transaction_added_triggers_without_payment(fmt: messages.Format) -> None:
    """A PaymentTransactionAdded delivery triggers a fetch of its payment."""
    trigger = parse_delivery(messages.transaction_added("proj", PAYMENT, PAYMENT["transactions"][0], fmt))
    assert isinstance(trigger, PaymentTrigger)
    assert trigger.payment is None and trigger.message_type == "PaymentTransactionAdded"
    assert trigger.message_id


def test_payload_not_included_fetches_the_payment() -> None:
    """A delivery whose payload was left out still triggers the payment, without an embedded copy."""
    message = json.loads(messages.payment_created("proj", PAYMENT, "platform"))
    del message["payment"]
    message["payloadNotIncluded"] = {"reason": "Payload too large", "payloadType": "PaymentCreated"}
    trigger = parse_delivery(json.dumps(message).encode())
    assert isinstance(trigger, PaymentTrigger) and trigger.payment is None and trigger.payment_id == "pay-1"


def test_subscription_test_delivery_is_ignored() -> None:
    """The ResourceCreated test delivery is acknowledged and ignored."""
    assert isinstance(parse_delivery(messages.resource_created("proj")), Ignored)


@pytest.mark.parametrize("message_type", ["PaymentTransactionStateChanged", "PaymentInteractionAdded", "OrderCreated"])
def test_other_message_types_are_ignored(message_type: str) -> None:
    """Our own writes come back as other message types: they are ignored, not errors."""
    message = json.loads(messages.payment_created("proj", PAYMENT, "platform"))
    message["type"] = message_type
    result = parse_delivery(json.dumps(message).encode())
    assert isinstance(result, Ignored) and message_type in result.reason


def test_other_resource_types_are_ignored() -> None:
    """A message about another resource is not ours."""
    message = json.loads(messages.payment_created("proj", PAYMENT, "platform"))
    message["resource"]["typeId"] = "order"
    assert isinstance(parse_delivery(json.dumps(message).encode()), Ignored)


def test_malformed_embedded_payment_falls_back_to_fetching() -> None:
    """An embedded payment that does not validate is dropped; the payment is fetched instead."""
    message = json.loads(messages.payment_created("proj", PAYMENT, "platform"))
    message["payment"]["amountPlanned"] = "lots"
    trigger = parse_delivery(json.dumps(message).encode())
    assert isinstance(trigger, PaymentTrigger) and trigger.payment is None


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"notificationType": NaN}', "NaN"),  # the standard library accepts it; JSON does not
        (b"[1, 2]", "JSON list"),
        (b'{"notificationType": "Message"}', "resource"),
        (b'{"notificationType": "Message", "resource": {"typeId": "payment", "id": "../../etc"}}', "resource.id"),
        (b'{"specversion": "1.0", "id": "x", "type": "t", "source": "s", "data": "nope"}', "data"),
    ],
)
def test_bad_deliveries_name_what_is_wrong(body: bytes, named: str) -> None:
    """A delivery that cannot be understood raises BadDelivery naming the problem."""
    with pytest.raises(BadDelivery, match=named.replace(".", r"\.")):
        parse_delivery(body)


def test_bad_delivery_error_never_quotes_values() -> None:
    """Validation errors name fields, never the values they held (which may be customer input)."""
    with pytest.raises(BadDelivery) as caught:
        parse_delivery(b'{"notificationType": 12345678, "resource": {"typeId": "payment", "id": "sensitive value!"}}')
    assert "sensitive value" not in str(caught.value) and "12345678" not in str(caught.value)


def test_oversized_and_too_deep_deliveries_are_bad() -> None:
    """Size is limited before parsing, and a nesting bomb is a bad delivery, not a crash."""
    with pytest.raises(BadDelivery, match="above the limit of 1024"):
        parse_delivery(b" " * 1025, max_bytes=1024)
    with pytest.raises(BadDelivery, match="nested too deeply"):
        parse_delivery(b"[" * 200_000 + b"]" * 200_000, max_bytes=1_000_000)
