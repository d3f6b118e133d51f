"""The sandbox's notifications: what a PSP simulator sends when it decides a Pending execution later.

The scheme is Stripe's, under the sandbox's own header: ``Sandbox-Signature: t=<unix>,v1=<hex>``, the
HMAC-SHA256 of ``"<t>.<body>"`` with the route's ``webhook_secret``, within a tolerance of the signed
time. The body names the execution by its reference; the worker reads the execution fresh from the
ledger, as it would fetch a Stripe object. ``signed_notice`` makes one: the demo and the tests play
the PSP with it, settling an execution in the ledger and then notifying the receiver.
"""

import hashlib
import hmac
import re
import time
import uuid
from collections.abc import Mapping

import orjson

from connector.adapters.contract import OPERATION_FOR, BadNotification, Finding, PspState
from connector.models.notice import Notice
from connector.models.payment import TransactionType

SIGNATURE_HEADER = "Sandbox-Signature"
EVENT_TYPE = "execution.settled"
TOLERANCE_S = 300
TYPE_FOR = {operation: kind for kind, operation in OPERATION_FOR.items()}
_ID = re.compile(r"[A-Za-z0-9_-]{1,256}")


def signature(body: bytes, secret: str, at: int) -> str:
    mac = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


def notice_body(reference: str, payment_id: str, at: int | None = None) -> bytes:
    """The body of a notice the sandbox sends about the execution ``reference`` (a new event id each time)."""
    at = int(time.time()) if at is None else at
    event = {
        "id": f"sbxevt_{uuid.uuid4().hex}",
        "type": EVENT_TYPE,
        "created": at,
        "reference": reference,
        "paymentId": payment_id,
    }
    return orjson.dumps(event)


def signed_headers(body: bytes, secret: str, at: int | None = None) -> dict[str, str]:
    """Headers signing ``body`` now: a PSP signs each delivery attempt anew, so a retry is never stale."""
    return {SIGNATURE_HEADER: signature(body, secret, int(time.time()) if at is None else at), "Content-Type": "application/json"}


def signed_notice(reference: str, payment_id: str, secret: str, at: int | None = None) -> tuple[bytes, dict[str, str]]:
    body = notice_body(reference, payment_id, at)
    return body, signed_headers(body, secret, at)


def parse(body: bytes, headers: Mapping[str, str], secret: str | None, now: float | None = None) -> Notice:
    if not secret:
        raise BadNotification("no webhook secret is configured for this route")
    header = headers.get(SIGNATURE_HEADER)
    if not header:
        raise BadNotification(f"no {SIGNATURE_HEADER} header")
    parts = dict(item.strip().partition("=")[::2] for item in header.split(","))
    if not parts.get("t", "").isdigit() or len(parts["t"]) > 12:
        raise BadNotification(f"the {SIGNATURE_HEADER} header has no timestamp")
    at = int(parts["t"])
    if not hmac.compare_digest(signature(body, secret, at), f"t={at},v1={parts.get('v1', '')}"):
        raise BadNotification("the signature does not match this route's webhook secret")
    now = time.time() if now is None else now
    if abs(now - at) > TOLERANCE_S:
        raise BadNotification(f"the signature is {now - at:.0f}s away from now, beyond the tolerance of {TOLERANCE_S}s")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadNotification("the body is not JSON") from None
    if not isinstance(document, dict):
        raise BadNotification("the body is not a JSON object")
    event_id, reference, payment_id = document.get("id"), document.get("reference"), document.get("paymentId")
    if not all(isinstance(v, str) and _ID.fullmatch(v) for v in (event_id, reference)) or document.get("type") != EVENT_TYPE:
        raise BadNotification("not a sandbox notice: id, type or reference missing or malformed")
    assert isinstance(event_id, str) and isinstance(reference, str)
    hint = payment_id if isinstance(payment_id, str) and _ID.fullmatch(payment_id) else None
    return Notice(event_id, EVENT_TYPE, reference, at, hint)


def findings(state: PspState) -> tuple[Finding, ...]:
    execution = state.object["execution"]
    kind: TransactionType = TYPE_FOR[execution.operation]
    return (
        Finding(
            kind, execution.state, execution.psp_reference, execution.transaction_id, code=execution.code, text=execution.text
        ),
    )
