"""Amounts as Stripe counts them, where Stripe's currency rules differ from ISO 4217 minor units."""

from connector.models.currency import minor_units
from connector.models.payment import Money

# Stripe's amounts where they differ from ISO 4217 minor units (Stripe's currency docs, 'Special cases').
STRIPE_DECIMALS = {
    "ISK": 2,  # ISO: no decimals; Stripe: two, in whole krónur (multiples of 100)
    "MGA": 0,  # ISO: two decimals; Stripe: a zero-decimal currency
}
WHOLE_TENS = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})  # three decimals, the last one 0


def stripe_amount(money: Money) -> int | str:
    """The amount Stripe expects for ``money``, or why Stripe would refuse it (a readable text)."""
    code = money.currency_code.upper()
    if code in WHOLE_TENS and money.cent_amount % 10:
        return f"Stripe takes {code} amounts in whole tens of the minor unit (the last of three decimals 0), not {money}"
    shift = STRIPE_DECIMALS.get(code, minor_units(code)) - minor_units(code)
    factor: int = 10 ** abs(shift)
    if shift >= 0:
        return money.cent_amount * factor
    whole, rest = divmod(money.cent_amount, factor)
    if rest:
        return f"Stripe takes {code} in whole units only, and {money} has a fraction"
    return whole


def from_stripe_amount(amount: int, currency: str) -> Money:
    """The commercetools money of an amount Stripe gives (a dispute's, say): the inverse of ``stripe_amount``."""
    code = currency.upper()
    shift = STRIPE_DECIMALS.get(code, minor_units(code)) - minor_units(code)
    cent_amount = amount // 10**shift if shift >= 0 else amount * 10 ** (-shift)
    return Money(centAmount=cent_amount, currencyCode=code)
