"""SMS length as Twilio counts it: GSM-7 160/153 septets, else UCS-2 70/67 UTF-16 code units.

These are the rules of Twilio's own segment calculator (TwilioDevEd/message-segment-calculator):

- A body is GSM-7 only if every character is in the GSM 03.38 basic table or its extension table;
  one other character (any Chinese character, any emoji) makes the whole body UCS-2.
- A GSM extension character (``^ { } \\ [ ~ ] | €`` and form feed) is sent as escape + char and
  takes 2 septets; the pair is never split across two segments.
- In UCS-2 a character outside the BMP (most emoji) takes 2 code units (a surrogate pair), and a
  user-perceived character made of several code points (an emoji with a skin tone, a ZWJ family, a
  flag, a letter with combining accents) is kept whole: none of them is ever split across segments.
- A concatenated message carries a 6-octet header in every segment, hence 153 septets / 67 units
  per segment instead of 160 / 70.

Twilio refuses a body longer than 1600 characters (error 21617): see :attr:`Measure.too_long`.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")
_GSM7_ALL = GSM7_BASIC | GSM7_EXTENSION

GSM7 = "GSM-7"
UCS2 = "UCS-2"
GSM7_SINGLE, GSM7_MULTI = 160, 153  # septets
UCS2_SINGLE, UCS2_MULTI = 70, 67  # UTF-16 code units
MAX_BODY_CHARACTERS = 1600  # Twilio refuses longer bodies (error 21617)


@dataclass(frozen=True)
class Measure:
    encoding: str
    segments: int
    characters: int  # code points, the unit of Twilio's 1600-character limit
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)

    @property
    def too_long(self) -> bool:
        """True when Twilio would refuse the body (error 21617)."""
        return self.characters > MAX_BODY_CHARACTERS

    def as_dict(self) -> dict[str, object]:
        return {
            "encoding": self.encoding,
            "segments": self.segments,
            "characters": self.characters,
            "units": self.units,
        }


def is_gsm7(text: str) -> bool:
    return _GSM7_ALL.issuperset(text)


def _joins_previous(ch: str, prev: str) -> bool:
    """Whether ``ch`` continues the user-perceived character that ``prev`` is part of.

    A practical subset of Unicode's grapheme cluster rules (UAX #29): enough for combining accents,
    variation selectors, emoji modifiers, ZWJ sequences, keycaps and tag sequences.
    """
    cp = ord(ch)
    return (
        prev == "\u200d"  # after a zero-width joiner
        or cp == 0x200D
        or 0xFE00 <= cp <= 0xFE0F  # variation selectors
        or 0xE0100 <= cp <= 0xE01EF
        or 0x1F3FB <= cp <= 0x1F3FF  # emoji skin-tone modifiers
        or 0xE0020 <= cp <= 0xE007F  # tag characters (subdivision flags)
        or unicodedata.category(ch) in ("Mn", "Me", "Mc")  # combining marks, keycap
    )


def _is_regional_indicator(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


def _ucs2_costs(text: str) -> list[int]:
    """UTF-16 code units of each user-perceived character, in order."""
    costs: list[int] = []
    prev = ""
    pending_flag = False  # the previous character is the first half of a regional-indicator pair
    for ch in text:
        unit = 2 if ord(ch) > 0xFFFF else 1
        if costs and (_joins_previous(ch, prev) or (pending_flag and _is_regional_indicator(ch))):
            costs[-1] += unit
            pending_flag = False
        else:
            costs.append(unit)
            pending_flag = _is_regional_indicator(ch)
        prev = ch
    return costs


def _gsm7_costs(text: str) -> list[int]:
    return [2 if ch in GSM7_EXTENSION else 1 for ch in text]


def _count_segments(costs: list[int], multi: int) -> int:
    """Segments of a concatenated message: a character never straddles two segments."""
    segments, used = 1, 0
    for cost in costs:
        if used + cost > multi and used > 0:
            segments += 1
            used = 0
        while cost > multi:  # one pathological cluster longer than a segment (e.g. 100 accents)
            segments += 1
            cost -= multi
        used += cost
    return segments


def measure(text: str) -> Measure:
    """Encoding and segment count of ``text``, exactly as the provider will bill it."""
    if is_gsm7(text):
        units = len(text) + sum(1 for ch in text if ch in GSM7_EXTENSION)
        segments = 1 if units <= GSM7_SINGLE else _count_segments(_gsm7_costs(text), GSM7_MULTI)
        return Measure(GSM7, segments, len(text), units)
    units = len(text.encode("utf-16-le")) // 2
    segments = 1 if units <= UCS2_SINGLE else _count_segments(_ucs2_costs(text), UCS2_MULTI)
    return Measure(UCS2, segments, len(text), units)
