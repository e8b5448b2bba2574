"""Phone normalisation: Excel artefacts, reasons, and agreement with phonenumbers itself."""

from __future__ import annotations

import random

import phonenumbers
import pytest

from broadcaster.phones import (
    EMPTY,
    EXCEL_SCIENTIFIC,
    INVALID,
    LANDLINE,
    NOT_A_NUMBER,
    NOT_MOBILE,
    REASONS,
    TOO_SHORT,
    PhoneNormaliser,
    clean,
)

MOBILE = "+8613800138000"


@pytest.mark.parametrize(
    "raw",
    [
        "13800138000",
        "+86 138 0013 8000",
        "0086-138-0013-8000",
        "86 13800138000",
        "8613800138000",
        "(+86) 138-0013-8000",
        "１３８００１３８０００",  # full-width digits
        "＋８６ １３８ ００１３ ８０００",  # full-width plus and ideographic spaces
        "'13800138000",  # Excel's text prefix
        '="13800138000"',  # Excel's formula wrapper
        "13800138000.0",  # a number cell saved as float
        " 13800138000\u200b ",  # zero-width space pasted from a web page
        "\ufeff13800138000",
    ],
)
def test_written_forms_of_one_mobile_become_the_same_e164(raw: str) -> None:
    result = PhoneNormaliser("CN")(raw)
    assert (result.phone, result.region, result.reason) == (MOBILE, "CN", None)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", EMPTY),
        ("   ", EMPTY),
        ("1.38001E+10", EXCEL_SCIENTIFIC),
        ("1.38E+10", EXCEL_SCIENTIFIC),
        ("010-12345678", LANDLINE),
        ("12345", TOO_SHORT),
        ("15400138000", INVALID),
        ("19400138000", INVALID),
        ("abc", NOT_A_NUMBER),
        ("400-810-8888", NOT_MOBILE),
    ],
)
def test_bad_values_get_their_own_reason(raw: str, reason: str) -> None:
    result = PhoneNormaliser("CN")(raw)
    assert result.phone is None and result.reason == reason
    assert result.message.startswith(REASONS[reason])


def test_scientific_notation_is_refused_even_when_phonenumbers_would_accept_the_digits() -> None:
    # 1.3800138E+10 "looks" like 13800138000 but Excel has already rounded the digits away.
    assert PhoneNormaliser("CN")("1.3800138E+10").reason == EXCEL_SCIENTIFIC


def test_landlines_are_accepted_when_allowed_and_by_opt_out_normalisers() -> None:
    assert PhoneNormaliser("CN", allow_landline=True)("010-12345678").phone == "+861012345678"
    assert PhoneNormaliser("CN", mobile_only=False)("010-12345678").phone == "+861012345678"
    assert PhoneNormaliser("CN", mobile_only=False)("400-810-8888").phone == "+864008108888"


def test_other_countries_and_regions() -> None:
    assert PhoneNormaliser("CN")("+1 415 555 2671").phone == "+14155552671"  # US: FIXED_LINE_OR_MOBILE
    assert PhoneNormaliser("CN")("+852 9123 4567").phone == "+85291234567"
    hk = PhoneNormaliser("HK")("9123 4567")
    assert (hk.phone, hk.region) == ("+85291234567", "HK")
    with pytest.raises(ValueError, match="unknown region"):
        PhoneNormaliser("XX")


def test_clean_undoes_excel_artefacts_only() -> None:
    assert clean("'13800138000") == "13800138000"
    assert clean('="13800138000"') == "13800138000"
    assert clean("13800138000.00") == "13800138000"
    assert clean("138.0013.8000") == "138.0013.8000"  # not a float artefact: left to phonenumbers


def _reference(raw: str) -> tuple[str | None, str | None]:
    """What phonenumbers alone says about the cleaned value: (E.164, None) or (None, 'refused')."""
    try:
        number = phonenumbers.parse(clean(raw), "CN")
    except phonenumbers.NumberParseException:
        return None, "refused"
    if not phonenumbers.is_valid_number(number):
        return None, "refused"
    kind = phonenumbers.number_type(number)
    if kind not in (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE):
        return None, "refused"
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), None


def test_agrees_with_phonenumbers_on_every_1xxx_prefix_in_every_common_form() -> None:
    """The fast path for 11-digit Chinese numbers must give phonenumbers' own verdict."""
    rnd = random.Random(2011)
    normalise = PhoneNormaliser("CN")
    checked = 0
    for prefix in range(1000, 2000):
        digits = f"{prefix}{rnd.randrange(10**7):07d}"
        for raw in (digits, "+86" + digits, "0086 " + digits, "86" + digits, f"{digits[:3]}-{digits[3:]}"):
            got = normalise(raw)
            assert (got.phone, None if got.ok else "refused") == _reference(raw), raw
            checked += 1
    assert checked == 5_000


def test_each_distinct_value_is_normalised_once_and_the_cache_is_bounded(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls: list[object] = []
    real = phonenumbers.number_type
    monkeypatch.setattr(phonenumbers, "number_type", lambda n: calls.append(n) or real(n))
    normalise = PhoneNormaliser("CN", cache_size=3)
    for _ in range(5):
        normalise("13800138000")
    assert len(calls) == 1
    normalise("+86 138 0013 8000")  # same number written another way: not validated again
    assert len(calls) == 1
    for i in range(10):
        normalise(f"1380013801{i}")
    assert len(calls) == 11
    normalise("13800138000")  # long since evicted: the cache holds at most 3 values
    assert len(calls) == 12
