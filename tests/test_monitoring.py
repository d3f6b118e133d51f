"""Operations as code (deploy/monitoring, deploy/kubernetes/components/monitoring): the alert rules
pass promtool's check and its unit tests, with a firing and a silent case per alert; each alert names
a runbook section that exists; the kustomize component renders and validates; and every metric and
label the rules, their tests and the dashboard query is one a running worker or receiver exports."""

import asyncio
import dataclasses
import json
import re
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from connector.adapters.registry import AdapterRoute
from connector.commercetools.client import CommercetoolsClient
from connector.metrics import Metrics
from connector.models.payment import TransactionState
from tests.debian import ensure_command
from tests.go_tools import go_module_dir
from tests.localstripe_peer import LocalStripe
from tests.monitoring import COMPONENT, DASHBOARD, PROMETHEUS_RULE, RULES, RULES_TESTS, prometheus_rule
from tests.queues import KafkaQueue
from tests.stack import free_port, messages
from tests.stack.payments import as_json, payment_draft
from tests.support import receiver_config_for, running_receiver, running_worker, sandbox_route, settings_for
from tests.test_deploy import KUBERNETES_VERSION, OVERLAYS, render_with

ROOT = Path(__file__).resolve().parent.parent
OPERATIONS = ROOT / "docs" / "operations.md"
RUNBOOKS = "https://github.com/your-org/commercetools-payment-connector/blob/main/docs/operations.md#"
PROMETHEUS_OPERATOR = "github.com/prometheus-operator/prometheus-operator@v0.85.0"  # its CRDs, for the schemas
# Labels Prometheus gives every series of a scrape target, not the connector's own.
TARGET_LABELS = {"namespace", "job", "pod", "instance"}
# What a scrape exports: sample name -> label name -> the values seen.
Exported = dict[str, dict[str, set[str]]]
# Series Prometheus makes of each scrape (with the target's labels only), beside the connector's own.
PROMETHEUS_MADE: Exported = {"up": {}}
# Labels whose values come from the world (HTTP statuses, partitions): the scrape shows only some.
OPEN_VALUES = {"status", "partition", "le"}
# Grafana's variables, as a query would be sent.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$namespace": ".*"}


def alerts() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules() -> None:
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_promtool_unit_tests_pass_with_a_firing_and_a_silent_case_per_alert() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", RULES_TESTS.name], cwd=RULES_TESTS.parent, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    cases: dict[str, set[bool]] = defaultdict(set)
    for group in yaml.safe_load(RULES_TESTS.read_text())["tests"]:
        for case in group["alert_rule_test"]:
            cases[case["alertname"]].add(bool(case.get("exp_alerts")))
    missing = {rule["alert"]: {True, False} - cases[rule["alert"]] for rule in alerts()}
    assert {name: sorted(kinds) for name, kinds in missing.items() if kinds} == {}, (
        "alerts without a firing (True) or silent case"
    )


def test_each_alert_names_its_severity_and_a_runbook_section_that_exists() -> None:
    anchors = {_anchor(line.lstrip("#").strip()) for line in OPERATIONS.read_text().splitlines() if line.startswith("#")}
    for rule in alerts():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        url = rule["annotations"]["runbook_url"]
        assert url.startswith(RUNBOOKS) and url.removeprefix(RUNBOOKS) in anchors, f"{rule['alert']}: {url}"


# The modules that write each metric's label values (connector/...): a value a rule matches must be
# written there, not only zeroed at start-up by connector/metrics.py.
WRITERS = {
    "connector_transactions_total": ["models/payment.py"],  # the transaction states
    "connector_retries_total": ["processor/reconcile.py", "commercetools/client.py", "worker.py"],
    "connector_reconciler_payments_total": ["reconciler.py", "processor/reconcile.py"],
    "connector_reconciler_sweeps_total": ["reconciler.py"],
    "connector_notifications_total": ["receiver.py"],
    "connector_payment_api_requests_total": ["payment_api.py", "processor/intent_decisions.py"],
}


def test_each_value_the_rules_match_is_one_the_code_writes() -> None:
    """The scrape below shows the label values the worker zeroes at start-up; this ties each to the
    code that counts the metric: a value renamed there would leave its alert silent forever."""
    for rule in alerts():
        for selector in _selectors(promql_parser.parse(rule["expr"])):
            for matcher in selector.matchers.matchers:
                positive = matcher.op is promql_parser.MatchOp.Equal or (
                    matcher.op is promql_parser.MatchOp.Re and re.fullmatch(r"[\w|]+", matcher.value)
                )
                if matcher.name in TARGET_LABELS | OPEN_VALUES or not positive:
                    continue
                assert selector.name in WRITERS, f"{rule['alert']}: name the modules that write {selector.name} in WRITERS"
                code = "\n".join((ROOT / "connector" / module).read_text() for module in WRITERS[selector.name])
                for word in matcher.value.split("|"):
                    assert f'"{word}"' in code, f'{rule["alert"]}: {selector.name}{{{matcher.name}="{word}"}} is written nowhere'


def test_the_prometheus_rule_holds_the_rules_file() -> None:
    written = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert written == prometheus_rule(), f"{PROMETHEUS_RULE.name} differs from {RULES.name}: run make rules"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_an_overlay_with_the_monitoring_component_renders_and_validates(overlay: str, tmp_path: Path) -> None:
    """The rules, a PodMonitor that scrapes the workers and the receivers, and the dashboard for Grafana's sidecar."""
    documents = render_with(overlay, COMPONENT, tmp_path)
    for document in documents:
        if document["apiVersion"] == "monitoring.coreos.com/v1":
            prometheus_operator_validator(document["kind"]).validate(document)
        elif not document["apiVersion"].startswith("keda.sh/"):  # test_deploy validates those
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in documents}
    assert by_kind[("PrometheusRule", "payment-connector")]["spec"] == prometheus_rule()["spec"]
    monitor = by_kind[("PodMonitor", "payment-connector")]["spec"]
    [expression] = monitor["selector"]["matchExpressions"]
    for name in ("payment-connector", "payment-connector-receiver"):
        pod = by_kind[("Deployment", name)]["spec"]["template"]
        assert pod["metadata"]["labels"][expression["key"]] in expression["values"], name
        assert pod["metadata"]["labels"][monitor["jobLabel"]] == name  # the job the rules sum by
        ports = {port["name"] for port in pod["spec"]["containers"][0]["ports"]}
        assert {endpoint["port"] for endpoint in monitor["podMetricsEndpoints"]} <= ports, name
    named = {m.value for rule in alerts() for sel in _selectors(promql_parser.parse(rule["expr"])) if sel.name == "up"
             for m in sel.matchers.matchers if m.name == "job"}  # fmt: skip
    assert {job for value in named for job in value.split("|")} == {"payment-connector", "payment-connector-receiver"}
    dashboard = by_kind[("ConfigMap", "payment-connector-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"][DASHBOARD.name]) == json.loads(DASHBOARD.read_text())


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    assert {variable["name"] for variable in dashboard["templating"]["list"]} == {"datasource", "namespace"}
    for panel in (p for p in panels if p["type"] != "row"):
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        assert len({target["refId"] for target in panel["targets"]}) == len(panel["targets"]), panel["title"]
        for target in panel["targets"]:
            promql_parser.parse(_as_sent(target["expr"]))  # raises on a query Prometheus would refuse
    titles = " ".join(panel["title"].lower() for panel in panels)
    for subject in ("deliveries", "transactions by state", "psp call latency", "commercetools latency", "lag",
                    "in flight", "dead letters", "pauses", "notifications", "payments api"):  # fmt: skip
        assert subject in titles, subject


@pytest.mark.e2e
async def test_every_series_the_rules_their_tests_and_the_dashboard_query_is_exported(
    kafka_bootstrap: str, ct_url: str, project_key: str, ct: CommercetoolsClient, tmp_path: Path, localstripe: LocalStripe
) -> None:
    """A worker and a receiver (with the Payments API) run against the real peers; after one payment
    went through, their /metrics hold every name, label and matched value the queries use."""
    queue = KafkaQueue(kafka_bootstrap)
    await queue.create()
    stripe = AdapterRoute(
        interface="STRIPE", adapter="stripe", settings={"secret_key": "sk_test_monitoring", "api_base": localstripe.url}
    )
    worker_port, receiver_port = free_port(), free_port()
    settings = settings_for(
        queue, ct_url=ct_url, project_key=project_key, ledger=tmp_path / "ledger.sqlite", routes=[stripe],
        http_host="127.0.0.1", http_port=worker_port,
    )  # fmt: skip
    config = receiver_config_for(
        queue, [AdapterRoute.model_validate(sandbox_route(tmp_path / "ledger.sqlite")), stripe], payment_api=(ct_url, project_key)
    )
    config = dataclasses.replace(
        config, worker=config.worker.model_copy(update={"http_host": "127.0.0.1", "http_port": receiver_port})
    )
    async with running_worker(settings), running_receiver(config), httpx.AsyncClient(timeout=5) as http:
        payment = await ct.create_payment(payment_draft(1000, (), (("Charge", 1000),)))
        await queue.publish([messages.payment_created(project_key, as_json(payment), "platform")])
        async with asyncio.timeout(60):
            while (await ct.get_payment(payment.id)).transactions[0].state is not TransactionState.SUCCESS:
                await asyncio.sleep(0.2)
        exported = {**PROMETHEUS_MADE, **(await _scrape(http, worker_port))}
        for name, labels in (await _scrape(http, receiver_port)).items():
            for label, values in labels.items():
                exported.setdefault(name, {}).setdefault(label, set()).update(values)

    problems = [
        *(f"rule {rule['alert']}: {problem}" for rule in alerts() for problem in _unexported(rule["expr"], exported)),
        *(
            f"dashboard {panel['title']!r}: {problem}"
            for panel in json.loads(DASHBOARD.read_text())["panels"]
            for target in panel.get("targets", [])
            for problem in _unexported(_as_sent(target["expr"]), exported)
        ),
        *(f"rule test series {series}: {problem}" for series in _test_series() for problem in _unlike_a_scrape(series, exported)),
    ]
    assert problems == []


async def _scrape(http: httpx.AsyncClient, port: int) -> Exported:
    response = await http.get(f"http://127.0.0.1:{port}/metrics")
    response.raise_for_status()
    exported: Exported = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = exported.setdefault(sample.name, {})
            for label, value in sample.labels.items():
                labels.setdefault(label, set()).add(value)
    return exported


def _unexported(expression: str, exported: Exported) -> Iterator[str]:
    """What ``expression`` queries that the scrape lacks: a metric, a label of it, or a matched value."""
    tree = promql_parser.parse(expression)
    for selector in _selectors(tree):
        if selector.name not in exported:
            yield f"{selector.name} is not exported"
            continue
        labels = exported[selector.name]
        for matcher in selector.matchers.matchers:
            if matcher.name in TARGET_LABELS:
                continue
            if matcher.name not in labels:
                yield f"{selector.name} has no label {matcher.name}"
            elif matcher.name not in OPEN_VALUES:
                yield from _unmatched(selector.name, matcher, labels[matcher.name])
    for node in _nodes(tree):
        grouping = _grouping_labels(node)
        available = set().union(*(exported.get(s.name or "", {}).keys() for s in _selectors(node))) | TARGET_LABELS
        for label in sorted(set(grouping) - available):
            yield f"groups by {label}, which none of its series has"


def _unmatched(name: str, matcher: promql_parser.Matcher, values: set[str]) -> Iterator[str]:
    """A value the matcher names that the scrape never shows: a typo would leave an alert silent forever."""
    if matcher.op in (promql_parser.MatchOp.Equal, promql_parser.MatchOp.NotEqual):
        if matcher.value not in values:
            yield f'{name}{{{matcher.name}="{matcher.value}"}} is never exported (seen: {sorted(values)})'
    elif matcher.op is promql_parser.MatchOp.Re and re.fullmatch(r"[\w|]+", matcher.value):  # plain words: each must exist
        for word in matcher.value.split("|"):
            if word not in values:
                yield f'{name}{{{matcher.name}=~"...{word}..."}} is never exported (seen: {sorted(values)})'
    elif matcher.op is promql_parser.MatchOp.Re:
        if not any(re.fullmatch(matcher.value, value) for value in values):
            yield f'{name}{{{matcher.name}=~"{matcher.value}"}} matches none of {sorted(values)}'
    else:  # !~ must leave some series out, and some in
        matched = {value for value in values if re.fullmatch(matcher.value, value)}
        if not matched or matched == values:
            left = "none" if matched == values else "all"
            yield f'{name}{{{matcher.name}!~"{matcher.value}"}} leaves {left} of {sorted(values)}'


def _unlike_a_scrape(series: str, exported: Exported) -> Iterator[str]:
    """A rule test's input series must look like one a scrape of the connector gives: its name, and
    exactly its labels (with the target's)."""
    selector = promql_parser.parse(series)
    assert isinstance(selector, promql_parser.VectorSelector)
    name = selector.name or ""
    if name not in exported:
        yield f"{name} is not exported"
        return
    labels = {matcher.name for matcher in selector.matchers.matchers} - TARGET_LABELS
    if labels != set(exported[name]):
        yield f"has labels {sorted(labels)}; the connector exports {sorted(exported[name])}"


def _selectors(tree: promql_parser.Expr) -> list[promql_parser.VectorSelector]:
    return [node for node in _nodes(tree) if isinstance(node, promql_parser.VectorSelector)]


def _nodes(tree: promql_parser.Expr) -> list[promql_parser.Expr]:
    found: list[promql_parser.Expr] = []
    promql_parser.walk(tree, lambda node: found.append(node) and None)
    return found


def _grouping_labels(node: promql_parser.Expr) -> list[str]:
    """The labels of a ``by``/``without`` clause, or of an ``on``/``ignoring``/``group_*`` one."""
    if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
        return list(node.modifier.labels)
    if isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
        matching = node.modifier.matching
        return [*(matching.labels if matching is not None else []), *(node.modifier.group_labels or [])]
    return []


def _test_series() -> list[str]:
    return [series["series"] for group in yaml.safe_load(RULES_TESTS.read_text())["tests"] for series in group["input_series"]]


def _as_sent(expression: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expression = expression.replace(variable, value)
    return expression


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


@cache
def promtool() -> str:
    return ensure_command("promtool", "prometheus")


@cache
def prometheus_operator_validator(kind: str) -> jsonschema.Draft7Validator:
    crds = go_module_dir(PROMETHEUS_OPERATOR) / "example" / "prometheus-operator-crd"
    crd = yaml.safe_load((crds / f"monitoring.coreos.com_{kind.lower()}s.yaml").read_text())
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]
    return jsonschema.Draft7Validator(_strict(schema))


def _strict(schema: Any) -> Any:
    """The schema refusing fields it does not name, as ``kubectl apply --validate=strict`` does (a typo
    in a rule's field would otherwise be dropped by the API server without a word)."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        strict["additionalProperties"] = False
    return strict


def test_the_comparison_finds_what_a_scrape_lacks() -> None:
    """The check above, on a made-up scrape: each kind of mismatch is reported, a matching query is not."""
    exported: Exported = {
        "connector_transactions_total": {"operation": {"Charge"}, "outcome": {"Success", "Failure"}},
        "connector_commercetools_requests_total": {"method": {"GET"}, "status": {"200"}},
    }
    good = 'sum by (namespace, outcome) (rate(connector_transactions_total{outcome="Failure", job="x"}[5m]))'
    assert list(_unexported(good, exported)) == []
    assert list(_unexported('rate(connector_commercetools_requests_total{status=~"5..|error"}[5m])', exported)) == []
    assert list(_unexported("connector_transaction_total", exported)) == ["connector_transaction_total is not exported"]
    assert list(_unexported('connector_transactions_total{state="Failure"}', exported)) == [
        "connector_transactions_total has no label state"
    ]
    [typo] = _unexported('connector_transactions_total{outcome="Failed"}', exported)
    assert 'outcome="Failed"} is never exported' in typo
    [missing] = _unexported('connector_transactions_total{outcome=~"Failure|Pending"}', exported)
    assert "Pending" in missing
    [nothing] = _unexported('connector_transactions_total{operation!~"Re.*"}', exported)
    assert "leaves all" in nothing
    [everything] = _unexported('connector_transactions_total{outcome!~"S.*|F.*"}', exported)
    assert "leaves none" in everything
    assert list(_unexported('connector_transactions_total{outcome!~"S.*"}', exported)) == []
    [no_match] = _unexported('connector_transactions_total{outcome=~"P.*"}', exported)
    assert "matches none" in no_match
    assert list(_unexported("sum by (interface) (connector_transactions_total)", exported)) == [
        "groups by interface, which none of its series has"
    ]
    series = 'connector_transactions_total{job="x", pod="p", operation="Charge", outcome="Success", interface="a"}'
    [shape] = _unlike_a_scrape(series, exported)
    assert "interface" in shape
    assert list(_unlike_a_scrape('connector_transactions_total{pod="p", operation="Charge", outcome="Success"}', exported)) == []


def test_readiness_is_reported_as_series_and_alerted_series_start_at_zero() -> None:
    metrics = Metrics()
    subscribed = False
    metrics.watch_readiness({"source_subscribed": lambda: subscribed, "commercetools_token": lambda: True})
    metrics.start_worker_series(["STRIPE"])
    metrics.start_receiver_series(["STRIPE"], ["capturePayment", "unknown"])
    sample = metrics.registry.get_sample_value
    assert sample("connector_ready", {}) == 0
    assert sample("connector_readiness_check", {"check": "source_subscribed"}) == 0
    assert sample("connector_readiness_check", {"check": "commercetools_token"}) == 1
    subscribed = True
    assert sample("connector_ready", {}) == 1 and sample("connector_readiness_check", {"check": "source_subscribed"}) == 1
    for name, labels in [
        ("connector_psp_credentials_rejected_total", {"interface": "stripe"}),
        ("connector_notice_disagreements_total", {"interface": "stripe"}),
        ("connector_transactions_total", {"operation": "Refund", "outcome": "Failure"}),
        ("connector_source_failures_total", {"operation": "dead_letter"}),
        ("connector_reconciler_payments_total", {"result": "still_pending"}),
        ("connector_notifications_total", {"interface": "stripe", "result": "refused"}),
        ("connector_payment_api_requests_total", {"action": "unknown", "result": "busy"}),
        ("connector_payment_api_seconds_count", {"waited": "true"}),
    ]:
        assert sample(name, labels) == 0, (name, labels)
    assert sample("connector_transactions_total", {"operation": "Chargeback", "outcome": "Success"}) is None  # never executed
