"""Known secrets through a whole run: none may reach a log line or an interface interaction."""

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from connector.commercetools.client import CommercetoolsClient
from tests.localstripe_peer import LocalStripe
from tests.queues import EventQueue
from tests.stack import messages
from tests.stack.payments import as_json, wait_until_settled
from tests.support import CLIENT_SECRET, sandbox_route, worker_environment

pytestmark = pytest.mark.reliability

STRIPE_KEY = "sk_test_s3cr3t_do_not_log_7f3a"
SANDBOX_TOKEN = "pm_sandbox_s3cr3t_token_5d1c"
STRIPE_TOKEN = "pm_card_visa"  # localstripe knows only its own test payment methods


def draft(interface: str, token: str, kind: str, amount: int) -> dict[str, object]:
    return {
        "amountPlanned": {"currencyCode": "EUR", "centAmount": amount},
        "paymentMethodInfo": {"paymentInterface": interface, "method": "card", "token": {"value": token}},
        "transactions": [{"type": kind, "amount": {"currencyCode": "EUR", "centAmount": amount}, "state": "Initial"}],
    }


@pytest.mark.parametrize("queue", ["kafka"], indirect=True)
async def test_no_secret_in_logs_or_interactions(
    queue: EventQueue, ct_url: str, project_key: str, ct: CommercetoolsClient, tmp_path: Path, localstripe: LocalStripe
) -> None:
    """Client secret, Stripe key and payment tokens stay out of every log line (debug level) and interaction."""
    payments = [
        await ct.create_payment(draft("sandbox", SANDBOX_TOKEN, "Authorization", 1000)),
        await ct.create_payment(draft("sandbox", SANDBOX_TOKEN, "Charge", 1013)),  # declined
        await ct.create_payment(draft("STRIPE", STRIPE_TOKEN, "Authorization", 2000)),
        await ct.create_payment(draft("STRIPE", "pm_card_chargeCustomerFail", "Charge", 3000)),  # declined
    ]
    await queue.publish(
        [messages.payment_created(project_key, as_json(p), "cloudevents") for p in payments]
        + [b"{not json", messages.resource_created(project_key)]
    )
    routes = [
        sandbox_route(tmp_path / "l.sqlite"),
        {"interface": "STRIPE", "adapter": "stripe", "settings": {"secret_key": STRIPE_KEY, "api_base": localstripe.url}},
    ]
    environment = os.environ | worker_environment(queue, ct_url=ct_url, project_key=project_key, routes=routes)
    environment["CONNECTOR_LOG_LEVEL"] = "debug"
    worker = subprocess.Popen([sys.executable, "-m", "connector", "run"], env=environment, stderr=subprocess.PIPE, text=True)
    try:
        settled = await wait_until_settled(ct, [p.id for p in payments], timeout_s=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, log = await asyncio.to_thread(worker.communicate, timeout=30)
    assert worker.returncode == 0
    assert [p.transactions[0].state.value for p in settled] == ["Success", "Failure", "Success", "Failure"]
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    events = {(line["event"], line["level"]) for line in lines}
    assert ("transaction.outcome", "info") in events and any(level == "debug" for _, level in events)  # really written
    interactions = json.dumps([i.fields for p in settled for i in p.interface_interactions])
    for secret in (CLIENT_SECRET, STRIPE_KEY, SANDBOX_TOKEN, STRIPE_TOKEN, "pm_card_chargeCustomerFail"):
        assert secret not in log, f"{secret[:6]}... in the log"
        assert secret not in interactions, f"{secret[:6]}... in an interaction"
