"""Reading recipient CSV files as operators produce them (Excel exports, WPS, hand-made lists).

Two passes over the file, both streaming (memory does not grow with the file):
1. :func:`inspect` reads it all once: SHA-256, encoding (auto: UTF-8 with or without BOM, UTF-16
   with BOM, else GB18030), delimiter, header mapping, data row count, and any structural problem.
   Every "this file cannot be processed" error is found here, before anything is written.
2. :func:`read_rows` streams the data rows with the row number an operator sees in a spreadsheet
   (header = row 1).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

READ_CHUNK = 1 << 20
FIRST_LINE_LIMIT = 1 << 16
DELIMITERS = (",", "\t", ";", "|")

# Header names recognised (compared after NFKC, lower-casing and removing spaces, _ - * : ( ) ).
# Mobile-specific names win over generic "phone" names when a file has both.
PHONE_HEADERS = (
    ("mobile", "mobilephone", "mobilenumber", "mobileno", "cell", "cellphone", "cellnumber", "手机",
     "手机号", "手机号码", "移动电话", "手机号必填", "手机号码必填"),
    ("phone", "phonenumber", "phoneno", "telephone", "tel", "msisdn", "电话", "电话号码", "联系电话",
     "联系方式", "号码"),
)  # fmt: skip
NAME_HEADERS = ("name", "fullname", "contactname", "contact", "姓名", "名字", "联系人", "联系人姓名", "称呼")

_KEY_DROP = dict.fromkeys(map(ord, " _-*:()\ufeff\u200b"), None)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_PHONE_LIKE = re.compile(r"[\s\d+\-().'=\"]*")
_MAGIC = {
    b"PK\x03\x04": "an Excel workbook or other zip archive (.xlsx), not CSV: save it as CSV first",
    b"\xd0\xcf\x11\xe0": "an old Excel workbook (.xls), not CSV: save it as CSV first",
    b"%PDF": "a PDF document, not CSV",
}


class SourceError(Exception):
    """The file cannot be processed at all; the message names the file and says why."""


@dataclass(frozen=True)
class Layout:
    """What :func:`inspect` learnt about a file; everything :func:`read_rows` needs."""

    path: Path
    encoding: str  # the codec used to read it, e.g. "utf-8", "utf-8-sig", "gb18030"
    sha256: str
    size: int
    delimiter: str
    header: tuple[str, ...] | None  # None: a headerless one-column list of numbers
    header_row: int  # spreadsheet row of the header (0 when headerless)
    phone_index: int
    name_index: int | None
    attributes: tuple[tuple[int, str], ...]  # (column index, attribute key)
    data_rows: int  # non-blank rows after the header
    ignored_columns: tuple[int, ...] = field(default=())  # columns with an empty header

    @property
    def phone_header(self) -> str | None:
        return None if self.header is None else self.header[self.phone_index].strip()


@dataclass(slots=True)
class Row:
    number: int  # as in a spreadsheet: the header is row 1
    phone: str
    name: str | None
    attributes: dict[str, str]
    extra: bool  # non-empty cells beyond the header's columns (a shifted row?)


def header_key(text: str) -> str:
    return unicodedata.normalize("NFKC", text).translate(_KEY_DROP).strip().lower()


def resolve_encoding(name: str) -> str:
    """Python's codec name for ``name`` (``auto`` passes through); unknown names are an error."""
    if name.lower() == "auto":
        return "auto"
    try:
        return codecs.lookup(name).name
    except LookupError:
        raise SourceError(f"unknown encoding {name!r} (try utf-8, gb18030, gbk, big5 or auto)") from None


def inspect(path: Path, *, encoding: str = "auto", phone_column: str | None = None) -> Layout:
    """Read the whole file once; raise :class:`SourceError` if it cannot be imported."""
    encoding = resolve_encoding(encoding)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise SourceError(f"{path}: not a file")
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    if size == 0:
        raise SourceError(f"{path} is empty")
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            raise SourceError(f"{path} is {what}")
    sha256, utf8_ok = _hash_and_check_utf8(path)
    encoding = _choose_encoding(head, encoding, utf8_ok)
    delimiter = _sniff_delimiter(path, encoding)

    records = _records(path, encoding, delimiter)
    first: tuple[int, list[str]] | None = None
    for number, fields in records:
        if _is_blank(fields):
            continue
        first = (number, fields)
        break
    if first is None:
        raise SourceError(f"{path} has no rows (only blank lines)")
    header_row, header_fields = first
    mapping = _map_columns(path, header_fields, phone_column)
    if mapping is None:  # a headerless list of numbers: row `header_row` is data
        data_rows = 1 + sum(1 for _, fields in records if not _is_blank(fields))
        return Layout(path, encoding, sha256, size, delimiter, None, 0, 0, None, (), data_rows)
    phone_index, name_index, attributes, ignored = mapping
    data_rows = sum(1 for _, fields in records if not _is_blank(fields))
    if data_rows == 0:
        raise SourceError(f"{path} has a header but no data rows")
    return Layout(
        path,
        encoding,
        sha256,
        size,
        delimiter,
        tuple(header_fields),
        header_row,
        phone_index,
        name_index,
        attributes,
        data_rows,
        ignored,
    )


def read_rows(layout: Layout) -> Iterator[Row]:
    """Stream the non-blank data rows of an inspected file."""
    width = len(layout.header) if layout.header is not None else 1
    phone_i, name_i, attributes = layout.phone_index, layout.name_index, layout.attributes
    for number, fields in _records(layout.path, layout.encoding, layout.delimiter, check=False):
        if number <= layout.header_row or _is_blank(fields):
            continue
        n = len(fields)
        phone = fields[phone_i] if phone_i < n else ""
        name = (fields[name_i].strip() or None) if name_i is not None and name_i < n else None
        attrs = {key: value for i, key in attributes if i < n and (value := fields[i].strip())}
        extra = n > width and any(f.strip() for f in fields[width:])
        yield Row(number, phone, name, attrs, extra)


def _hash_and_check_utf8(path: Path) -> tuple[str, bool]:
    digest = hashlib.sha256()
    decoder: codecs.IncrementalDecoder | None = codecs.getincrementaldecoder("utf-8")()
    with path.open("rb") as f:
        while chunk := f.read(READ_CHUNK):
            digest.update(chunk)
            if decoder is not None:
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError:
                    decoder = None
        if decoder is not None:
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                decoder = None
    return digest.hexdigest(), decoder is not None


def _choose_encoding(head: bytes, requested: str, utf8_ok: bool) -> str:
    if head.startswith(codecs.BOM_UTF8):
        if requested in ("auto", "utf-8"):
            return "utf-8-sig"  # the BOM is not part of the first header name
        return requested
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) and requested in ("auto", "utf-16"):
        return "utf-16"
    if requested != "auto":
        return requested
    return "utf-8" if utf8_ok else "gb18030"


def _sniff_delimiter(path: Path, encoding: str) -> str:
    """The candidate that occurs most in the first line (the header); ',' when none does."""
    try:
        with path.open(encoding=encoding, newline="", errors="replace") as f:
            first = f.readline(FIRST_LINE_LIMIT)
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    counts = {d: first.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def _records(
    path: Path, encoding: str, delimiter: str, *, check: bool = True
) -> Iterator[tuple[int, list[str]]]:
    """(spreadsheet row number, fields) for every record, blank ones included.

    ``check``: refuse control characters (binary data); the second pass skips what the first did.
    """
    try:
        with path.open(encoding=encoding, newline="") as f:
            reader = csv.reader(_checked_lines(path, f) if check else f, delimiter=delimiter)
            number = 0
            try:
                for fields in reader:
                    number += 1
                    yield number, fields
            except csv.Error as exc:
                raise SourceError(f"{path}: row {number + 1}: not valid CSV ({exc})") from None
    except UnicodeDecodeError as exc:
        raise SourceError(_decode_message(path, encoding, exc)) from None
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None


def _checked_lines(path: Path, lines: Iterator[str]) -> Iterator[str]:
    for line in lines:
        if _CONTROL.search(line):
            raise SourceError(f"{path} contains binary data (control characters), not CSV text")
        yield line


def _decode_message(path: Path, encoding: str, exc: UnicodeDecodeError) -> str:
    bad = exc.object[exc.start : exc.start + 1].hex() if isinstance(exc.object, bytes) else "?"
    if encoding == "gb18030":
        return (
            f"cannot decode {path} as UTF-8 or GB18030 (byte 0x{bad}): not a CSV text file, "
            "or pass --encoding"
        )
    return f"cannot decode {path} as {encoding} (byte 0x{bad}); pass the right --encoding"


def _is_blank(fields: list[str]) -> bool:
    return not "".join(fields).strip()


def _map_columns(
    path: Path, header: list[str], phone_column: str | None
) -> tuple[int, int | None, tuple[tuple[int, str], ...], tuple[int, ...]] | None:
    """(phone index, name index, attributes, ignored columns), or None for a headerless list."""
    keys = [header_key(h) for h in header]
    phone_index = _find_phone_column(path, header, keys, phone_column)
    if phone_index is None:
        return None
    name_index = next((i for i, k in enumerate(keys) if k in NAME_HEADERS and i != phone_index), None)
    attributes: list[tuple[int, str]] = []
    ignored: list[int] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(header):
        if i in (phone_index, name_index):
            continue
        key = raw.strip()
        if not key:
            ignored.append(i)
            continue
        if key in seen:
            raise SourceError(f"{path}: columns {seen[key] + 1} and {i + 1} are both named {key!r}")
        seen[key] = i
        attributes.append((i, key))
    return phone_index, name_index, tuple(attributes), tuple(ignored)


def _find_phone_column(path: Path, header: list[str], keys: list[str], wanted: str | None) -> int | None:
    shown = ", ".join(h.strip() for h in header if h.strip()) or "(none)"
    if wanted is not None:
        stripped = [h.strip() for h in header]
        if wanted.strip() in stripped:
            return stripped.index(wanted.strip())
        if header_key(wanted) in keys:
            return keys.index(header_key(wanted))
        if wanted.isdigit() and 1 <= int(wanted) <= len(header):
            return int(wanted) - 1
        raise SourceError(f"{path}: no column {wanted!r} (columns: {shown})")
    for group in PHONE_HEADERS:
        for i, key in enumerate(keys):
            if key in group:
                return i
    cells = [h for h in header if h.strip()]
    if len(cells) == 1 and _looks_like_phone(cells[0]):
        return None
    hint = " (row 1 looks like data: add a header row)" if any(map(_looks_like_phone, cells)) else ""
    raise SourceError(
        f"{path}: no phone column{hint}; expected a header such as 手机号码, 手机, 电话, mobile or phone "
        f"(columns: {shown}); or pass --phone-column"
    )


def _looks_like_phone(cell: str) -> bool:
    text = unicodedata.normalize("NFKC", cell).strip()
    return bool(_PHONE_LIKE.fullmatch(text)) and sum(c.isdigit() for c in text) >= 5
