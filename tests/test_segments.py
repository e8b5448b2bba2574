"""SMS measurement as Twilio counts it (field notes, and Twilio's own segment calculator)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broadcaster.segments import GSM7, MAX_BODY_CHARACTERS, UCS2, measure

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # 👨‍👩‍👧: 3 emoji + 2 ZWJ = 8 UTF-16 units
THUMBS_TONE = "\U0001f44d\U0001f3fd"  # 👍🏽: emoji + skin-tone modifier = 4 units
FLAG_CN = "\U0001f1e8\U0001f1f3"  # 🇨🇳: two regional indicators = 4 units


@pytest.mark.parametrize(
    ("text", "encoding", "segments"),
    [
        # the field notes' examples
        ("好质量 好生活", UCS2, 1),
        ("好" * 70, UCS2, 1),
        ("好" * 71, UCS2, 2),  # 67 + 4
        ("A" * 160, GSM7, 1),
        ("A" * 161, GSM7, 2),  # 153 + 8
        ("€" * 80, GSM7, 1),  # 160 septets
        ("€" * 81, GSM7, 2),
        ("😀" * 35, UCS2, 1),  # 70 units
        ("😀" * 36, UCS2, 2),
        # multi-segment boundaries: 153 septets / 67 units per segment
        ("A" * 306, GSM7, 2),
        ("A" * 307, GSM7, 3),
        ("好" * 134, UCS2, 2),
        ("好" * 135, UCS2, 3),
        ("A" * 1600, GSM7, 11),
        ("好" * 1600, UCS2, 24),
        # trivial bodies
        ("", GSM7, 1),
        ("A", GSM7, 1),
        ("\n", GSM7, 1),
        ("Hello\r\nWorld", GSM7, 1),
    ],
)
def test_segments_table(text: str, encoding: str, segments: int) -> None:
    m = measure(text)
    assert (m.encoding, m.segments) == (encoding, segments)


def test_gsm7_basic_table_characters_cost_one_septet() -> None:
    basic = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ÄÖÑÜ§¿äöñüà"
    m = measure(basic)
    assert m.encoding == GSM7
    assert m.units == len(basic)


@pytest.mark.parametrize("ch", list("^{}\\[~]|€\f"))
def test_gsm7_extension_characters_cost_two_septets(ch: str) -> None:
    assert measure(ch * 80).units == 160
    assert (measure(ch * 80).encoding, measure(ch * 80).segments) == (GSM7, 1)
    assert measure(ch * 81).segments == 2
    assert measure("A" * 159 + ch).segments == 2  # 161 septets


@pytest.mark.parametrize(
    "ch",
    [
        "ç",  # only the capital Ç is in the GSM-7 table
        "`",
        "\x1b",  # the escape code itself is not a character that can be sent
        "\u00a0",  # no-break space
        "’",  # typographic apostrophe (Twilio's Smart Encoding is not assumed)
        "，",  # full-width comma
        "😀",
    ],
)
def test_one_character_outside_gsm7_makes_the_whole_body_ucs2(ch: str) -> None:
    m = measure("Quality month " + ch)
    assert m.encoding == UCS2
    assert m.units == len("Quality month ") + (2 if ch == "😀" else 1)


def test_an_extension_character_is_never_split_across_segments() -> None:
    # 152 + 2 + 152 = 306 septets would fit 2 segments of 153 if the € could be split; it cannot.
    assert measure("A" * 152 + "€" + "A" * 152).segments == 3
    assert measure("A" * 153 + "€" + "A" * 151).segments == 2  # same length, € not on the edge
    # extension characters count 2 septets but stay 1 code unit once the body is UCS-2
    assert measure("€" * 69 + "好").segments == 1


def test_an_emoji_is_never_split_across_segments() -> None:
    # 66 + 2 + 66 = 134 units would fit 2 segments of 67 if the surrogate pair could be split.
    assert measure("好" * 66 + "😀" + "好" * 66).segments == 3
    assert measure("好" * 65 + "😀" + "好" * 67).segments == 2
    assert measure("😀" * 67).segments == 3  # 33 + 33 + 1 emoji
    assert measure("😀" * 66).segments == 2


def test_emoji_sequences_are_kept_whole() -> None:
    # A ZWJ family (8 units) does not fit after 64 units: the first segment keeps 64, not 67.
    assert measure("好" * 64 + FAMILY + "好" * 62).segments == 3
    assert measure("好" * 59 + FAMILY + "好" * 67).segments == 2
    assert measure("好" * 64 + THUMBS_TONE + "好" * 65).segments == 3
    assert measure("好" * 63 + THUMBS_TONE + "好" * 67).segments == 2
    assert measure("好" * 64 + FLAG_CN + FLAG_CN + "好" * 63).segments == 3


def test_combining_marks_stay_with_their_letter() -> None:
    e_acute = "e\u0301"  # é as e + combining acute accent: UCS-2, 2 units, one character
    assert measure(e_acute).encoding == UCS2
    assert measure("好" * 66 + e_acute + "好" * 66).segments == 3


def test_units_and_characters() -> None:
    m = measure("【质量月】😀€")
    assert (m.encoding, m.characters, m.units) == (UCS2, 7, 8)
    m = measure("Price: 5€ [ok]")
    assert (m.encoding, m.characters, m.units) == (GSM7, 14, 17)
    assert m.as_dict() == {"encoding": GSM7, "segments": 1, "characters": 14, "units": 17}


def test_bodies_over_1600_characters_are_flagged() -> None:
    assert not measure("A" * MAX_BODY_CHARACTERS).too_long
    assert measure("A" * (MAX_BODY_CHARACTERS + 1)).too_long
    assert not measure("好" * MAX_BODY_CHARACTERS).too_long
    assert measure("好" * (MAX_BODY_CHARACTERS + 1)).too_long


def test_the_quality_month_slogans_fit_one_segment_each() -> None:
    slogans = []
    for pool in ("general", "machinery"):
        slogans += (
            (Path(__file__).resolve().parents[1] / "templates" / "slogans" / f"{pool}.txt")
            .read_text(encoding="utf-8")
            .splitlines()
        )
    assert len([s for s in slogans if s.strip()]) == 13
    for slogan in slogans:
        m = measure(slogan)
        assert m.encoding == UCS2
        assert m.segments == 1
