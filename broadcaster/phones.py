"""One raw phone value (as typed in a spreadsheet) to an E.164 number, or a reason why not.

Validation is phonenumbers' own (its metadata decides what is a valid mobile). What this module adds:
- clean-up of what Excel and people do to numbers: NFKC (full-width digits and signs), a leading
  ``'``, ``="…"`` wrappers, a trailing ``.0``; Excel scientific notation (``1.38001E+10``) is refused
  with its own reason because its digits are lost;
- speed: each distinct raw value is normalised once (bounded cache), and the overwhelmingly common
  shape, a Chinese mobile written as 11 digits with an optional +86/0086/86 prefix, skips
  ``phonenumbers.parse`` (the costly, generic part) and goes straight to ``phonenumbers.number_type``
  on the number built from those digits, which gives the same answer (``tests/test_phones.py`` checks
  this against the full path).
"""

from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType, ValidationResult
from phonenumbers.phonemetadata import PhoneMetadata

phonenumbers.enable_pattern_cache()

# Reason codes (stable: stored in import_rejects.reason and written to rejects files).
EMPTY = "empty"
EXCEL_SCIENTIFIC = "excel_scientific"
NOT_A_NUMBER = "not_a_number"
INVALID_COUNTRY_CODE = "invalid_country_code"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
INVALID = "invalid"
LANDLINE = "landline"
NOT_MOBILE = "not_mobile"

REASONS: dict[str, str] = {
    EMPTY: "no phone number in this row",
    EXCEL_SCIENTIFIC: "Excel scientific notation, digits lost: format the column as text and export again",
    NOT_A_NUMBER: "not a phone number",
    INVALID_COUNTRY_CODE: "unknown country calling code",
    TOO_SHORT: "too short for a phone number",
    TOO_LONG: "too long for a phone number",
    INVALID: "not a valid number in its numbering plan (no such prefix, or wrong length)",
    LANDLINE: "a fixed-line number, not a mobile (use --allow-landline to accept)",
    NOT_MOBILE: "not a mobile number",
}

_ACCEPTED_MOBILE = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE})
_TYPE_NAMES = {
    value: name.lower()
    for name, value in vars(PhoneNumberType).items()
    if name.isupper() and isinstance(value, int)
}

_SCIENTIFIC = re.compile(r"[+-]?\d+(?:\.\d*)?[eE][+-]?\d+")
_TRAILING_ZERO_DECIMAL = re.compile(r"(\+?\d+)\.0+")
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"), None)
_SEPARATORS = str.maketrans("", "", " -()")
_CN_MOBILE_SHAPE = re.compile(r"(?:\+86|0086|86)?(1\d{10})")
# Digits that parse() would strip as a carrier/IP-dialling prefix (e.g. 17951) take the full path.
_CN_PREFIX_FOR_PARSING = re.compile(PhoneMetadata.metadata_for_region("CN").national_prefix_for_parsing)


class Normalised(NamedTuple):
    """``phone`` (E.164) and ``region`` when accepted, else ``reason`` (a code of ``REASONS``).

    (A NamedTuple: built once per distinct number, and cheap to build.)
    """

    phone: str | None = None
    region: str | None = None
    reason: str | None = None
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.phone is not None

    @property
    def message(self) -> str:
        """A sentence for the operator."""
        if self.reason is None:
            return "accepted"
        text = REASONS[self.reason]
        return f"{text} ({self.detail})" if self.detail else text


def clean(raw: str) -> str:
    """Undo what spreadsheets and typing do to a number; the result is what phonenumbers sees."""
    text = unicodedata.normalize("NFKC", raw).translate(_INVISIBLE).strip()
    if text.startswith("="):  # ="13800138000" (Excel's way of forcing text)
        text = text[1:].strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    if text.startswith("'"):  # '13800138000 (Excel's text prefix)
        text = text[1:].strip()
    match = _TRAILING_ZERO_DECIMAL.fullmatch(text)  # 13800138000.0 (a number cell saved as float)
    if match:
        text = match.group(1)
    return text


class PhoneNormaliser:
    """Normalises raw values for one default region; remembers each distinct value's outcome.

    ``mobile_only`` (recipients): only MOBILE and FIXED_LINE_OR_MOBILE are accepted, plus FIXED_LINE
    when ``allow_landline``. Without it (opt-outs) any valid number is accepted.
    """

    def __init__(
        self,
        region: str = "CN",
        *,
        mobile_only: bool = True,
        allow_landline: bool = False,
        cache_size: int = 100_000,
    ) -> None:
        region = region.upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown region {region!r} (expected an ISO 3166 code such as CN)")
        self.region = region
        self.mobile_only = mobile_only
        self.allow_landline = allow_landline
        self._cache_size = cache_size
        self._cache: dict[str, Normalised] = {}  # raw value, or 11 national digits → outcome
        self._fast = region == "CN"

    def __call__(self, raw: str | None) -> Normalised:
        if raw is None:
            return Normalised(reason=EMPTY)
        found = self._cache.get(raw)
        if found is None:
            found = self._normalise(raw)
            self._remember(raw, found)
        return found

    def _remember(self, key: str, value: Normalised) -> None:
        if len(self._cache) >= self._cache_size:  # bounded: memory stays flat on huge files
            self._cache.clear()
        self._cache[key] = value

    def _normalise(self, raw: str) -> Normalised:
        plain = self._fast and len(raw) == 11 and raw.isascii() and raw.isdigit() and raw[0] == "1"
        if plain and not _CN_PREFIX_FOR_PARSING.match(raw):  # the common case: nothing to clean
            return self._cn_judge(raw)  # (the cache was just asked about this very string)
        text = clean(raw)
        if not text:
            return Normalised(reason=EMPTY)
        if _SCIENTIFIC.fullmatch(text):
            return Normalised(reason=EXCEL_SCIENTIFIC)
        if self._fast:
            match = _CN_MOBILE_SHAPE.fullmatch(text.translate(_SEPARATORS))
            if match and not _CN_PREFIX_FOR_PARSING.match(match.group(1)):
                return self._cn_eleven_digits(match.group(1))
        return self._full(text)

    def _cn_eleven_digits(self, national: str) -> Normalised:
        found = self._cache.get(national)  # the same number written another way was seen before
        if found is None:
            found = self._cn_judge(national)
            self._remember(national, found)
        return found

    def _cn_judge(self, national: str) -> Normalised:
        number = phonenumbers.PhoneNumber(country_code=86, national_number=int(national))
        kind = phonenumbers.number_type(number)  # UNKNOWN exactly when not is_valid_number
        if kind in _ACCEPTED_MOBILE:
            return Normalised("+86" + national, "CN")
        return self._judge(number, kind, "CN")

    def _full(self, text: str) -> Normalised:
        try:
            number = phonenumbers.parse(text, self.region)
        except NumberParseException as exc:
            return Normalised(reason=_PARSE_REASONS.get(exc.error_type, NOT_A_NUMBER))
        kind = phonenumbers.number_type(number)  # UNKNOWN exactly when not is_valid_number
        region = phonenumbers.region_code_for_number(number) if kind != PhoneNumberType.UNKNOWN else None
        return self._judge(number, kind, region)

    def _judge(self, number: phonenumbers.PhoneNumber, kind: int, region: str | None) -> Normalised:
        if kind == PhoneNumberType.UNKNOWN:
            possible = phonenumbers.is_possible_number_with_reason(number)
            reason = _POSSIBLE_REASONS.get(possible, INVALID)
            return Normalised(reason=reason)
        if self.mobile_only and kind not in _ACCEPTED_MOBILE:
            if kind == PhoneNumberType.FIXED_LINE:
                if not self.allow_landline:
                    return Normalised(reason=LANDLINE)
            else:
                return Normalised(reason=NOT_MOBILE, detail=_TYPE_NAMES.get(kind, str(kind)))
        e164 = f"+{number.country_code}{phonenumbers.national_significant_number(number)}"
        return Normalised(phone=e164, region=region)


_PARSE_REASONS = {
    NumberParseException.INVALID_COUNTRY_CODE: INVALID_COUNTRY_CODE,
    NumberParseException.NOT_A_NUMBER: NOT_A_NUMBER,
    NumberParseException.TOO_SHORT_AFTER_IDD: TOO_SHORT,
    NumberParseException.TOO_SHORT_NSN: TOO_SHORT,
    NumberParseException.TOO_LONG: TOO_LONG,
}
_POSSIBLE_REASONS = {
    ValidationResult.TOO_SHORT: TOO_SHORT,
    ValidationResult.IS_POSSIBLE_LOCAL_ONLY: TOO_SHORT,  # e.g. 12345: a local number at best
    ValidationResult.TOO_LONG: TOO_LONG,
    ValidationResult.INVALID_COUNTRY_CODE: INVALID_COUNTRY_CODE,
}


def normalise_one(raw: str, region: str = "CN", *, mobile_only: bool = False) -> Normalised:
    """Convenience for single values typed by an operator (``optout add``)."""
    return PhoneNormaliser(region, mobile_only=mobile_only)(raw)
