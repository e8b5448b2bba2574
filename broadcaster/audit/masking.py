"""Phone number masking for review and exports, and spreadsheet formula neutralisation.

Numbers are masked unless a caller explicitly unmasks them (and records that it did).
"""

from __future__ import annotations

import re
from typing import Any

import phonenumbers

_E164 = re.compile(r"\+\d{6,15}")

# A cell starting with one of these is run as a formula by spreadsheet programs (CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def _mask_digits(digits: str) -> str:
    """Hide at least four digits in the middle; a Chinese mobile keeps 3 + 4: ``138****8000``."""
    n = len(digits)
    if n <= 2:
        return "*" * n
    if n <= 6:
        return "*" * (n - 2) + digits[-2:]
    stars = max(4, n - 7)
    tail = min(4, n - stars - 1)
    head = n - stars - tail
    return digits[:head] + "*" * stars + digits[n - tail :]


def mask_phone(phone: str | None) -> str | None:
    """``+8613800138000`` -> ``+86 138****8000``; other countries keep their code and mask the
    middle of the national number the same way. Anything unparseable is masked on its digits alone."""
    if phone is None:
        return None
    try:
        number = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        digits = "".join(ch for ch in phone if ch.isdigit())
        return _mask_digits(digits) if digits else "****"
    national = phonenumbers.national_significant_number(number)
    return f"+{number.country_code} {_mask_digits(national)}"


def mask_actor(actor: str | None) -> str | None:
    """An actor that is a phone number (a recipient replying STOP acts in their own name) is masked
    like any number; operators, services and processes keep their names."""
    return mask_phone(actor) if actor is not None and _E164.fullmatch(actor) else actor


def neutralise_cell(value: Any) -> Any:
    """Prefix ``'`` to a text cell a spreadsheet would run as a formula; other values unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value
