"""Minor units of currencies (ISO 4217): how many decimal places a ``centAmount`` counts.

commercetools keeps cent-precision money in the ISO 4217 minor unit of its currency (its
``fractionDigits``), so 500 JPY is ``centAmount`` 500 and 5.000 KWD is 5000. Only the exceptions
to two decimals are listed.
"""

ZERO_DECIMAL = frozenset(
    {"BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF"}
)
THREE_DECIMAL = frozenset({"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"})
FOUR_DECIMAL = frozenset({"CLF", "UYW"})


def minor_units(currency_code: str) -> int:
    """The decimal places of ``currency_code``'s minor unit; two for any code not listed as an exception."""
    code = currency_code.upper()
    if code in ZERO_DECIMAL:
        return 0
    if code in THREE_DECIMAL:
        return 3
    if code in FOUR_DECIMAL:
        return 4
    return 2
