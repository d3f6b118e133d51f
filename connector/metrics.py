"""The worker's Prometheus metrics, on a registry of its own (no process-wide state).

Each part of the worker receives the one ``Metrics`` object through its constructor and counts
what it does; ``/metrics`` (connector.ops_http) renders the registry. Labels are bounded sets
(message types, operations, states, HTTP methods and status codes, interfaces in lower case), never
ids or free text.
"""

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from connector.models.payment import TransactionState, TransactionType

if TYPE_CHECKING:
    from connector.breaker import Breaker

M = TypeVar("M", Counter, Gauge, Histogram)

# The interface label of a notification whose path names no route.
UNKNOWN_INTERFACE = "unknown"

# commercetools round trips: milliseconds (in the same region) to seconds.
COMMERCETOOLS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# PSP round trips: tens of milliseconds to a few seconds.
PSP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.deliveries = Counter(
            "connector_deliveries",
            "Deliveries handled, by message type and result",
            ["message_type", "result"],
            registry=self.registry,
        )
        self.transactions = Counter(
            "connector_transactions",
            "Transactions executed or refused, by operation and resulting state",
            ["operation", "outcome"],
            registry=self.registry,
        )
        self.psp_call_seconds = Histogram(
            "connector_psp_call_seconds",
            "One PSP call (one attempt), by interface and operation (find and look_up: lookups)",
            ["interface", "operation"],
            buckets=PSP_BUCKETS,
            registry=self.registry,
        )
        self.commercetools_requests = Counter(
            "connector_commercetools_requests",
            "Requests to the commercetools API, by method and HTTP status ('error': no answer)",
            ["method", "status"],
            registry=self.registry,
        )
        self.commercetools_seconds = Histogram(
            "connector_commercetools_request_seconds",
            "One request to the commercetools API (one attempt, answered or not), by method",
            ["method"],
            buckets=COMMERCETOOLS_BUCKETS,
            registry=self.registry,
        )
        self.retries = Counter(
            "connector_retries",
            "Retries after a transient fault, by what was retried",
            ["target"],  # commercetools, psp, delivery
            registry=self.registry,
        )
        self.conflicts = Counter(
            "connector_conflicts",
            "409 ConcurrentModification answers, by the write that met them",
            ["write"],  # claim, outcome
            registry=self.registry,
        )
        self.psp_credentials_rejected = Counter(
            "connector_psp_credentials_rejected",
            "PSP calls refused for our own credentials (HTTP 401/403): an operator must fix the key",
            ["interface"],
            registry=self.registry,
        )
        self.psp_lookups = Counter(
            "connector_psp_lookups",
            "Transactions claimed before, looked up at the PSP before executing, by what the lookup found",
            ["interface", "result"],  # found, nothing
            registry=self.registry,
        )
        self.outcome_writes_reduced = Counter(
            "connector_outcome_writes_reduced",
            "Outcomes commercetools refused in full, stored with state and PSP reference only",
            registry=self.registry,
        )
        self.outcomes_not_stored = Counter(
            "connector_outcomes_not_stored",
            "Outcomes commercetools refused even reduced to state and PSP reference: dead-lettered, for an operator",
            registry=self.registry,
        )
        self.source_failures = Counter(
            "connector_source_failures",
            "Source operations that failed and are tried again (the delivery stays unsettled meanwhile)",
            ["operation"],  # ack, dead_letter, retry_later; commit (Kafka's, in the source's own loop)
            registry=self.registry,
        )
        self.sweeps = Counter(
            "connector_reconciler_sweeps",
            "Reconciler intervals, by what came of them",
            ["result"],  # swept, not_its_turn, paused, failed
            registry=self.registry,
        )
        self.reconciled = Counter(
            "connector_reconciler_payments",
            "Payments the reconciler found needing work, by what it did",
            ["result"],  # driven, settled, still_pending, no_lookup, held, psp_paused, failed, claimed_too_often, ...
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "connector_dead_letters", "Deliveries moved to the dead-letter destination", registry=self.registry
        )
        self.in_flight = Gauge("connector_in_flight", "Deliveries being processed now", registry=self.registry)
        self.notice_disagreements = Counter(
            "connector_notice_disagreements",
            "PSP notices whose object the payment contradicts (left as it is, for an operator), by interface",
            ["interface"],
            registry=self.registry,
        )
        # The notification receiver (connector.receiver)
        self.notifications = Counter(
            "connector_notifications",
            "PSP notification requests answered by the receiver, by interface and result",
            ["interface", "result"],  # accepted, ignored, refused, unavailable (the queue), busy (the in-flight bound)
            registry=self.registry,
        )
        self.notification_seconds = Histogram(
            "connector_notification_seconds",
            "Time to answer one notification request (verification and the queue's acknowledgement)",
            buckets=PSP_BUCKETS,
            registry=self.registry,
        )
        # The Payments API (connector.payment_api), on the same public listener
        self.payment_api_requests = Counter(
            "connector_payment_api_requests",
            "Payments API requests answered, by action and result",
            ["action", "result"],  # approved, rejected, received; refused (4xx), unavailable (503), busy
            registry=self.registry,
        )
        self.payment_api_seconds = Histogram(
            "connector_payment_api_seconds",
            "Time to answer one Payments API request, by whether the caller waited for the outcome",
            ["waited"],
            buckets=PSP_BUCKETS,
            registry=self.registry,
        )
        self._children: dict[tuple[int, tuple[str, ...]], Counter | Gauge | Histogram] = {}

    # A labelled series exists only once counted, and a counter first seen at 1 hides that first
    # increase from rate() and increase(): an alert on a rare event (a dead letter, a refused key)
    # would miss the first one. So the series the alert rules query start at zero.
    def start_worker_series(self, interfaces: Iterable[str]) -> None:
        """Zero the worker's alerted series, for the routes' ``interfaces``."""
        executed = [t for t in TransactionType if t is not TransactionType.CHARGEBACK]  # the PSP's, never executed
        for operation in executed:
            for state in (TransactionState.SUCCESS, TransactionState.FAILURE, TransactionState.PENDING):
                self.labelled(self.transactions, operation.value, state.value)
        for interface in interfaces:
            self.labelled(self.psp_credentials_rejected, interface.casefold())
            self.labelled(self.notice_disagreements, interface.casefold())
        self._zero(self.retries, "commercetools", "psp", "delivery")
        self._zero(self.conflicts, "claim", "outcome", "notice")
        self._zero(self.source_failures, "ack", "dead_letter", "retry_later", "commit")
        self._zero(self.sweeps, "swept", "not_its_turn", "paused", "failed")
        self._zero(self.reconciled, "still_pending", "no_lookup", "claimed_too_often", "failed")

    def start_receiver_series(self, interfaces: Iterable[str], actions: Iterable[str]) -> None:
        """Zero the receiver's alerted series: notifications per interface, Payments API requests per action."""
        for interface in interfaces:
            for result in ("accepted", "ignored", "refused", "unavailable", "busy"):
                self.labelled(self.notifications, interface.casefold(), result)
        for result in ("refused", "busy"):  # a path with no route: counted apart, so that alerts can leave it out
            self.labelled(self.notifications, UNKNOWN_INTERFACE, result)
        for action in actions:
            for result in ("approved", "rejected", "received", "refused", "unavailable", "busy"):
                self.labelled(self.payment_api_requests, action, result)
        if actions:
            for waited in ("true", "false"):
                self.labelled(self.payment_api_seconds, waited)

    def _zero(self, metric: Counter, *values: str) -> None:
        for value in values:
            self.labelled(metric, value)

    def labelled(self, metric: M, *labels: str) -> M:
        """``metric.labels(*labels)``, remembered: the library's own lookup costs a lock and checks per call."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child  # type: ignore[return-value]

    def watch_lag(self, lag: Callable[[], Mapping[str, int]]) -> None:
        """Reports ``lag()`` (messages behind, per partition) on every scrape."""
        self.registry.register(_LagCollector(lag))

    def watch_readiness(self, checks: Mapping[str, Callable[[], bool]]) -> None:
        """Reports ``/readyz``'s answer and each of its checks on every scrape: an alert can name the one failing."""
        self.registry.register(_ReadinessCollector(checks))

    def watch_breakers(self, breakers: "Mapping[str, Breaker]") -> None:
        """Reports each dependency's pause (connector.breaker) on every scrape."""
        self.registry.register(_BreakerCollector(breakers))


class _BreakerCollector(Collector):
    def __init__(self, breakers: "Mapping[str, Breaker]") -> None:
        self._breakers = breakers

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        paused = GaugeMetricFamily("connector_paused", "1 while work that needs the dependency is paused", labels=["dependency"])
        paused_for = GaugeMetricFamily(
            "connector_paused_seconds", "How long the dependency's current pause has lasted", labels=["dependency"]
        )
        pauses = CounterMetricFamily("connector_pauses", "Pauses begun, by dependency", labels=["dependency"])
        for name, breaker in sorted(self._breakers.items()):
            paused.add_metric([name], float(breaker.is_open))
            paused_for.add_metric([name], breaker.open_for_s())
            pauses.add_metric([name], breaker.pauses)
        yield from (paused, paused_for, pauses)


class _ReadinessCollector(Collector):
    def __init__(self, checks: Mapping[str, Callable[[], bool]]) -> None:
        self._checks = checks

    def collect(self) -> Iterator[GaugeMetricFamily]:
        passing = {name: check() for name, check in sorted(self._checks.items())}
        ready = GaugeMetricFamily("connector_ready", "1 while /readyz answers 200 (every readiness check passes)")
        ready.add_metric([], float(all(passing.values())))
        checks = GaugeMetricFamily("connector_readiness_check", "1 while the readiness check passes", labels=["check"])
        for name, passed in passing.items():
            checks.add_metric([name], float(passed))
        yield from (ready, checks)


class _LagCollector(Collector):
    def __init__(self, lag: Callable[[], Mapping[str, int]]) -> None:
        self._lag = lag

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("connector_consumer_lag", "Messages behind the end of each partition", labels=["partition"])
        for partition, behind in sorted(self._lag().items()):
            family.add_metric([partition], behind)
        yield family
