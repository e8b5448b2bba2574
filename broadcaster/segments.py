"""SMS length as Twilio counts it: GSM-7 160/153 septets, else UCS-2 70/67 UTF-16 code units.

A GSM extension character (escape + char) takes 2 septets and a character outside the BMP takes 2
code units; neither is ever split across two segments.
"""

from __future__ import annotations

from dataclasses import dataclass

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")

GSM7 = "GSM-7"
UCS2 = "UCS-2"
MAX_BODY_CHARACTERS = 1600  # Twilio refuses longer bodies (error 21617)


@dataclass(frozen=True)
class Measure:
    encoding: str
    segments: int
    characters: int  # user-visible characters (code points)
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)

    def as_dict(self) -> dict[str, object]:
        return {
            "encoding": self.encoding,
            "segments": self.segments,
            "characters": self.characters,
            "units": self.units,
        }


def is_gsm7(text: str) -> bool:
    return all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text)


def _unit_costs(text: str, gsm: bool) -> list[int]:
    if gsm:
        return [2 if ch in GSM7_EXTENSION else 1 for ch in text]
    return [2 if ord(ch) > 0xFFFF else 1 for ch in text]


def _count_segments(costs: list[int], single: int, multi: int) -> int:
    total = sum(costs)
    if total <= single:
        return 1
    segments, used = 1, 0
    for cost in costs:
        if used + cost > multi:
            segments += 1
            used = 0
        used += cost
    return segments


def measure(text: str) -> Measure:
    """Encoding and segment count of ``text``, exactly as the provider will bill it."""
    gsm = is_gsm7(text)
    costs = _unit_costs(text, gsm)
    single, multi = (160, 153) if gsm else (70, 67)
    return Measure(
        encoding=GSM7 if gsm else UCS2,
        segments=_count_segments(costs, single, multi),
        characters=len(text),
        units=sum(costs),
    )
