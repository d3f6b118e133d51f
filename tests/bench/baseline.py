"""The benchmark's baseline: only the I/O a transaction needs, at the connector's concurrency.

Consume each delivery; GET the payment when the connector would (an Authorization or a direct
Charge needs the token; a PaymentTransactionAdded carries no payment); one POST claiming the
Initial transactions; the sandbox call per transaction (its latency and ledger write, as the
connector's adapter does it); one POST with the outcomes, of the same actions and size as the
connector's (their JSON by orjson, as the connector's; only the answers it reads are parsed). No
dispatcher, no models, no logging, no retries: raw aiohttp and aiokafka.

Usage: python -m tests.bench.baseline CONFIG_JSON  (the keys are read in ``main``)
"""

import asyncio
import gc
import json
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer

from connector.adapters.contract import Operation
from connector.adapters.sandbox import DAY_S, CaptureRules, Execution, SandboxLedger, simulate
from connector.app import GC_THRESHOLDS

OPERATIONS = {"Authorization": Operation.AUTHORIZE, "Charge": Operation.CHARGE, "Refund": Operation.REFUND,
              "CancelAuthorization": Operation.CANCEL_AUTHORIZATION}  # fmt: skip
NEEDS_TOKEN = {"Authorization", "Charge"}


class Baseline:
    def __init__(self, config: dict[str, Any], http: aiohttp.ClientSession, token: str, ledger: SandboxLedger) -> None:
        self._base = f"{config['ct_url']}/{config['project_key']}"
        self._http = http
        self._headers = {"Authorization": f"Bearer {token}"}
        self._ledger = ledger
        self._latency_s = config["latency_ms"] / 1000
        self._type_key = config["type_key"]

    async def handle(self, body: bytes) -> None:
        message = orjson.loads(body)
        message = message.get("data", message)  # CloudEvents wrap the Platform payload
        payment = message.get("payment")
        initial = [t for t in (payment or {}).get("transactions", []) if t["state"] == "Initial"]
        if payment is None or any(t["type"] in NEEDS_TOKEN for t in initial):
            payment = await self._send("GET", f"/payments/{message['resource']['id']}")
            initial = [t for t in payment["transactions"] if t["state"] == "Initial"]
        claim = [self._interaction("request", t, _summary(t)) for t in initial]
        payment = await self._send("POST", f"/payments/{payment['id']}", {"version": payment["version"], "actions": claim})
        actions: list[dict[str, Any]] = []
        for transaction in initial:
            state, code, text, reference = await self._psp(payment["id"], transaction)
            response = {"state": state, "code": code, "text": text, "reference": reference}
            actions += [
                {"action": "changeTransactionState", "transactionId": transaction["id"], "state": state},
                {"action": "changeTransactionInteractionId", "transactionId": transaction["id"], "interactionId": reference},
                self._interaction("response", transaction, _summary(transaction), response),
            ]
        actions += [
            {"action": "setStatusInterfaceCode", "interfaceCode": "captured"},
            {"action": "setStatusInterfaceText", "interfaceText": "captured: Amount charged"},
        ]
        await self._send("POST", f"/payments/{payment['id']}", {"version": payment["version"], "actions": actions}, parse=False)

    async def _psp(self, payment_id: str, transaction: dict[str, Any]) -> tuple[str, str, str, str]:
        await asyncio.sleep(self._latency_s)
        operation, amount = OPERATIONS[transaction["type"]], transaction["amount"]
        state, code, text = simulate(operation, amount["centAmount"])
        reference = f"sbx_{uuid.uuid4().hex}"
        self._ledger.submit(Execution(
            f"{transaction['id']}-{transaction['type']}", operation, payment_id, transaction["id"], amount["centAmount"],
            amount["currencyCode"], reference, state, code, text, 1,
        ), now=time.time(), retention_s=DAY_S, rules=CaptureRules(multiple_captures=False))  # fmt: skip
        return state.value, code, text, reference

    def _interaction(
        self, kind: str, transaction: dict[str, Any], request: dict[str, Any], response: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """``response`` carries the PSP's ``reference``, kept as the interaction's ``interactionId`` too."""
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        key = f"{transaction['id']}-{transaction['type']}"
        fields = {"type": kind, "transactionId": transaction["id"], "idempotencyKey": key, "createdAt": now,
                  "operation": OPERATIONS[transaction["type"]].value, "request": orjson.dumps(request).decode()}  # fmt: skip
        if response is not None:
            fields |= {"response": orjson.dumps(response).decode(), "interactionId": response["reference"]}
        return {"action": "addInterfaceInteraction", "type": {"typeId": "type", "key": self._type_key}, "fields": fields}

    async def _send(self, method: str, path: str, body: dict[str, Any] | None = None, parse: bool = True) -> Any:
        async with self._http.request(method, self._base + path, json=body, headers=self._headers) as response:
            response.raise_for_status()
            content = await response.read()
            return orjson.loads(content) if parse else None


async def main(config: dict[str, Any]) -> None:
    gc.set_threshold(*GC_THRESHOLDS)  # the connector's runtime, so that the code is what differs
    ledger = SandboxLedger(config["ledger_path"])
    session = {"connector": aiohttp.TCPConnector(limit=config["concurrency"]), "json_serialize": _json_text}
    async with aiohttp.ClientSession(**session) as http:
        grant, credentials = {"grant_type": "client_credentials"}, {"Authorization": aiohttp.encode_basic_auth("b", "b")}
        async with http.post(f"{config['ct_url']}/oauth/token", data=grant, headers=credentials) as response:
            token = (await response.json())["access_token"]
        baseline = Baseline(config, http, token, ledger)
        consumer = AIOKafkaConsumer(
            config["topic"], bootstrap_servers=config["bootstrap_servers"], group_id="baseline",
            enable_auto_commit=True, auto_offset_reset="earliest",
        )  # fmt: skip
        await consumer.start()
        slots = asyncio.Semaphore(config["concurrency"])
        done = 0

        async def one(body: bytes) -> None:
            nonlocal done
            try:
                await baseline.handle(body)
                done += 1
            finally:
                slots.release()

        try:
            async with asyncio.timeout(config["timeout_s"]), asyncio.TaskGroup() as tasks:
                while done < config["deliveries"]:
                    for records in (await consumer.getmany(timeout_ms=200)).values():
                        for record in records:
                            await slots.acquire()
                            tasks.create_task(one(record.value or b""))
        finally:
            await consumer.stop()
            ledger.close()
    print(json.dumps({"done": done, "finished_at": time.time()}))


def _summary(transaction: dict[str, Any]) -> dict[str, Any]:
    operation, amount = OPERATIONS[transaction["type"]].value, transaction["amount"]
    return {"operation": operation, "amount": amount["centAmount"], "currency": amount["currencyCode"]}


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
