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

import functools
import itertools
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


@functools.cache
def _joining() -> frozenset[str]:
    """Characters that continue the user-perceived character before them.

    A practical subset of Unicode's grapheme cluster rules (UAX #29): combining marks (keycaps
    included), the zero-width joiner, variation selectors, emoji skin-tone modifiers and tag
    characters. Built on first use (about 0.1 s), then a set lookup.
    """
    marks = (
        chr(cp)
        for cp in itertools.chain(range(0x20000), range(0xE0000, 0xE0200))
        if unicodedata.category(chr(cp)) in ("Mn", "Me", "Mc")
    )
    special = itertools.chain(
        [0x200D],  # zero-width joiner
        range(0xFE00, 0xFE10),  # variation selectors
        range(0xE0100, 0xE01F0),
        range(0x1F3FB, 0x1F400),  # emoji skin-tone modifiers
        range(0xE0020, 0xE0080),  # tag characters (subdivision flags)
    )
    return frozenset(itertools.chain(marks, map(chr, special)))


_REGIONAL_INDICATORS = frozenset(map(chr, range(0x1F1E6, 0x1F200)))
_ZWJ = "\u200d"


def _ucs2_costs(text: str) -> list[int]:
    """UTF-16 code units of each user-perceived character, in order."""
    joining = _joining()
    if joining.isdisjoint(text) and _REGIONAL_INDICATORS.isdisjoint(text):
        return [2 if ord(ch) > 0xFFFF else 1 for ch in text]
    costs: list[int] = []
    prev = ""
    pending_flag = False  # the previous character is the first half of a regional-indicator pair
    for ch in text:
        unit = 2 if ord(ch) > 0xFFFF else 1
        flag = ch in _REGIONAL_INDICATORS
        if costs and (ch in joining or prev == _ZWJ or (pending_flag and flag)):
            costs[-1] += unit
            pending_flag = False
        else:
            costs.append(unit)
            pending_flag = flag
        prev = ch
    return costs


def _gsm7_costs(text: str) -> list[int]:
    return [2 if ch in GSM7_EXTENSION else 1 for ch in text]


def _count_segments(costs: list[int], units: int, multi: int) -> int:
    """Segments of a concatenated message: a character never straddles two segments."""
    if len(costs) == units:  # every character is one unit: nothing to keep whole
        return -(-units // multi)
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
        units = len(text) + sum(map(text.count, GSM7_EXTENSION))
        segments = 1 if units <= GSM7_SINGLE else _count_segments(_gsm7_costs(text), units, GSM7_MULTI)
        return Measure(GSM7, segments, len(text), units)
    units = len(text.encode("utf-16-le")) // 2
    segments = 1 if units <= UCS2_SINGLE else _count_segments(_ucs2_costs(text), units, UCS2_MULTI)
    return Measure(UCS2, segments, len(text), units)
