"""Which adapter serves a payment: routes from settings, adapters from the entry point group.

A route maps ``paymentMethodInfo.paymentInterface`` (and, optionally, ``interfaceAccount``) to an
adapter plugin and that plugin's settings. Matching ignores case. A route without an account is the
interface's default, used for payments that name no account. A payment that names an account with
no route of its own is not executed: its transactions fail with a readable text.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from connector.adapters.contract import AdapterFactory, PaymentAdapter, can_execute, capabilities_of, finder_of
from connector.errors import ConfigurationError
from connector.models.delivery import describe_validation_error
from connector.models.payment import PaymentMethodInfo

ENTRY_POINT_GROUP = "connector.adapters"


class AdapterRoute(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    interface: str
    account: str | None = None
    adapter: str
    settings: dict[str, Any] = {}


@dataclass(frozen=True, slots=True)
class Route:
    """The adapter that serves a payment, and the names it was found under (for logs)."""

    interface: str
    account: str | None
    adapter: PaymentAdapter


@dataclass(frozen=True, slots=True)
class UnknownAccount:
    """The payment's interface is ours, but its account (or the lack of one) has no route."""

    interface: str
    account: str


class AdapterRegistry:
    def __init__(self, routes: Mapping[tuple[str, str | None], PaymentAdapter]) -> None:
        self._routes = {(interface.casefold(), _fold(account)): a for (interface, account), a in routes.items()}

    @classmethod
    def load(cls, routes: Iterable[AdapterRoute], plugins: Iterable[EntryPoint] | None = None) -> "AdapterRegistry":
        """Builds every routed adapter, so that a bad plugin or setting fails at start-up."""
        factories = {ep.name: ep for ep in (plugins if plugins is not None else entry_points(group=ENTRY_POINT_GROUP))}
        adapters: dict[tuple[str, str | None], PaymentAdapter] = {}
        for route in routes:
            key = (route.interface, route.account)
            where = f"adapter route {route.interface}/{route.account or '(default)'}"
            if key in adapters:
                raise ConfigurationError(f"{where} is configured twice")
            if route.adapter not in factories:
                known = ", ".join(sorted(factories)) or "none"
                raise ConfigurationError(f"{where}: no adapter plugin named {route.adapter!r} (installed: {known})")
            factory: AdapterFactory = factories[route.adapter].load()
            try:
                adapters[key] = factory(route.settings)
            except ValidationError as exc:
                raise ConfigurationError(f"{where}: invalid settings: {describe_validation_error(exc)}") from None
            except ValueError as exc:
                raise ConfigurationError(f"{where}: invalid settings: {exc}") from None
        return cls(adapters)

    def find(self, method: PaymentMethodInfo) -> Route | UnknownAccount | None:
        """The route for a payment; None when its interface is not served here."""
        if method.payment_interface is None:
            return None
        interface = method.payment_interface.casefold()
        account = _fold(method.interface_account)
        if (adapter := self._routes.get((interface, account))) is not None:
            return Route(method.payment_interface, method.interface_account, adapter)
        if not any(served == interface for served, _ in self._routes):
            return None
        return UnknownAccount(method.payment_interface, method.interface_account or "(none)")

    def route(self, interface: str, account: str | None) -> Route | None:
        """The route of exactly this interface and account (None: the interface's default), if configured."""
        adapter = self._routes.get((interface.casefold(), _fold(account)))
        return Route(interface, account, adapter) if adapter is not None else None

    def routes(self) -> list[tuple[str, str | None]]:
        """Each route's interface and account, in lower case."""
        return sorted(self._routes, key=lambda route: (route[0], route[1] or ""))

    def interfaces(self) -> list[str]:
        """Each routed interface once, in lower case."""
        return sorted({interface for interface, _ in self._routes})

    def keys_forgotten_after_s(self) -> dict[str, float]:
        """Per interface whose adapter cannot look a transaction up: how long its PSP keeps idempotency keys."""
        return {
            interface: capabilities_of(adapter).key_retention_s
            for (interface, _), adapter in self._routes.items()
            if finder_of(adapter) is None
        }

    def without_credentials(self) -> list[str]:
        """The routes whose adapter cannot call its PSP (built for the receiver alone), as ``interface/account``."""
        return [
            f"{interface}/{account or '(default)'}"
            for (interface, account), adapter in self._routes.items()
            if not can_execute(adapter)
        ]

    def longest_request_s(self) -> float:
        """The longest one PSP request of any routed adapter may run (their declared capabilities)."""
        return max((capabilities_of(adapter).request_timeout_s for adapter in self._routes.values()), default=0.0)

    async def aclose(self) -> None:
        for adapter in self._routes.values():
            await adapter.aclose()


def _fold(account: str | None) -> str | None:
    return account.casefold() if account else None
