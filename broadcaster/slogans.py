"""Slogan pools: plain UTF-8 files, one slogan per line (blank lines and ``#`` comments ignored).

The 2011 Quality Month slogans ship as ``templates/slogans/general.txt`` (10) and
``templates/slogans/machinery.txt`` (3, the machinery industry's supplement).
"""

from __future__ import annotations

from pathlib import Path


class SloganError(Exception):
    pass


def load_pool(path: Path) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise SloganError(f"slogan file {path} not found") from exc
    except UnicodeDecodeError as exc:
        raise SloganError(f"slogan file {path} is not UTF-8: {exc}") from exc
    pool = [s.strip() for s in text.splitlines() if s.strip() and not s.lstrip().startswith("#")]
    if not pool:
        raise SloganError(f"slogan file {path} has no slogans")
    return pool
