"""Routing payments to adapters, and loading adapters from the entry point group."""

from importlib.metadata import EntryPoint

import pytest

from connector.adapters.registry import AdapterRegistry, AdapterRoute, Route, UnknownAccount
from connector.adapters.sandbox import SandboxAdapter, SandboxLedger
from connector.errors import ConfigurationError
from connector.models.payment import PaymentMethodInfo


def method(interface: str | None, account: str | None = None) -> PaymentMethodInfo:
    return PaymentMethodInfo(paymentInterface=interface, interfaceAccount=account)


def test_routes_by_interface_and_account() -> None:
    """An account route wins; the default serves payments without an account; case is ignored."""
    eu, default = SandboxAdapter(SandboxLedger(":memory:")), SandboxAdapter(SandboxLedger(":memory:"))
    registry = AdapterRegistry({("SANDBOX", "eu"): eu, ("sandbox", None): default})
    eu_route = registry.find(method("sandbox", "EU"))
    assert isinstance(eu_route, Route) and eu_route.adapter is eu
    default_route = registry.find(method("Sandbox"))
    assert isinstance(default_route, Route) and default_route.adapter is default
    assert registry.find(method("STRIPE")) is None
    assert registry.find(method(None)) is None
    assert registry.find(method("sandbox", "us")) == UnknownAccount("sandbox", "us")


def test_installed_sandbox_plugin_is_found_through_the_entry_point() -> None:
    """The built-in sandbox is registered in the connector.adapters entry point group."""
    registry = AdapterRegistry.load([AdapterRoute(interface="sandbox", adapter="sandbox")])
    assert isinstance(registry.find(method("sandbox")), Route)


def test_unknown_plugin_is_a_startup_error() -> None:
    """A route naming a plugin that is not installed fails at start-up, listing what is installed."""
    with pytest.raises(ConfigurationError, match=r"no adapter plugin named 'nope'.*sandbox"):
        AdapterRegistry.load([AdapterRoute(interface="x", adapter="nope")])


def test_bad_plugin_settings_are_a_startup_error() -> None:
    """Invalid adapter settings name the route and the field."""
    with pytest.raises(ConfigurationError, match=r"sandbox/eu.*latency_ms"):
        AdapterRegistry.load(
            [AdapterRoute(interface="sandbox", account="eu", adapter="sandbox", settings={"latency_ms": "slow"})]
        )


def test_duplicate_routes_are_refused() -> None:
    """Two routes for the same interface and account are a configuration error."""
    route = AdapterRoute(interface="sandbox", adapter="sandbox")
    with pytest.raises(ConfigurationError, match="twice"):
        AdapterRegistry.load([route, route])


def test_third_party_entry_points_are_used() -> None:
    """Any entry point of the group can serve an interface."""
    plugin = EntryPoint(name="other", value="connector.adapters.sandbox:create_adapter", group="connector.adapters")
    registry = AdapterRegistry.load([AdapterRoute(interface="ACME", adapter="other")], plugins=[plugin])
    assert isinstance(registry.find(method("acme")), Route)
