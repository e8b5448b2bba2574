"""The Python half of an import: CSV rows → numbers to store and rejected rows, chunk by chunk.

Why a module of its own: this half is pure Python (decoding, phonenumbers), and it runs in a helper
process for big files, so that it uses the second core while the importer writes to the database.
Threads cannot do that: the GIL lets only one of them run Python, and measured, a writer thread next
to a preparing one was slower than doing both in turn. Small files are prepared in the importer's
own process, because starting a helper costs more than it saves there.

The helper is ``python -m broadcaster.import_rows``: it reads the layout and rules as a pickle on
stdin and writes length-prefixed pickles of :class:`Prepared` chunks on stdout. The pipe's buffer
bounds how far it runs ahead (about one chunk), so memory stays flat. Ctrl-C does not reach it (its
own process group; the importer stops it), and it ends on a broken pipe if the importer dies.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from broadcaster.csv_source import Layout, Row, SourceError, read_rows
from broadcaster.phones import PhoneNormaliser

CHUNK = 5000
HELPER_MIN_ROWS = 20_000  # below this, a helper process costs more than it saves

# Row-level reasons besides the phone ones of phones.REASONS.
EXTRA_FIELDS = "extra_fields"
NAME_TOO_LONG = "name_too_long"
MAX_NAME = 200
ROW_REASONS = {
    EXTRA_FIELDS: "more cells than the header has columns (a comma inside an unquoted value?)",
    NAME_TOO_LONG: f"name longer than {MAX_NAME} characters",
}

_FRAME = struct.Struct(">I")


class HelperFailed(Exception):
    """The helper process stopped before the end of the file; what was committed stays."""


@dataclass(frozen=True)
class RowRules:
    """What makes a row acceptable (picklable: the helper receives it)."""

    region: str = "CN"
    mobile_only: bool = True
    allow_landline: bool = False
    check_name: bool = True  # refuse names longer than MAX_NAME (recipients; opt-outs have no names)

    def normaliser(self) -> PhoneNormaliser:
        """Raises ValueError for an unknown region."""
        return PhoneNormaliser(self.region, mobile_only=self.mobile_only, allow_landline=self.allow_landline)


@dataclass
class Prepared:
    """One chunk: the first row of each accepted number (as staging rows, in file order) and rejects.

    ``staged``: dicts with phone, row_number, name, attributes (JSON text), region. ``rejects``: dicts with
    row_number, raw_value, reason, detail. ``repeats``: rows whose number came earlier in the chunk.
    """

    rows: int
    staged: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    repeats: int = 0


class Preparer:
    """Turns chunks of rows into :class:`Prepared` chunks; its phone normaliser's cache lives as long
    as it does (one per import, in whichever process prepares)."""

    def __init__(self, rules: RowRules) -> None:
        self.rules = rules
        self.normalise = rules.normaliser()

    def __call__(self, chunk: list[Row]) -> Prepared:
        prepared = Prepared(len(chunk))
        rejects, staged = prepared.rejects, prepared.staged
        seen: set[str] = set()
        check_name = self.rules.check_name
        for row in chunk:
            result = self.normalise(row.phone)
            if row.extra:
                reason, detail = EXTRA_FIELDS, ROW_REASONS[EXTRA_FIELDS]
            elif result.phone is None:
                reason, detail = result.reason, result.message
            elif check_name and row.name is not None and len(row.name) > MAX_NAME:
                reason, detail = NAME_TOO_LONG, ROW_REASONS[NAME_TOO_LONG]
            else:
                phone = result.phone
                if phone in seen:
                    prepared.repeats += 1
                else:
                    seen.add(phone)
                    staged.append(
                        {
                            "phone": phone,
                            "row_number": row.number,
                            "name": row.name,
                            # JSON text, as SQLAlchemy's JSON type would write it: serialised
                            # here, on the helper's core, not by the importer.
                            "attributes": json.dumps(row.attributes),
                            "region": result.region,
                        }
                    )
                continue
            rejects.append(
                {"row_number": row.number, "raw_value": row.phone, "reason": reason, "detail": detail}
            )
        return prepared


def prepared_chunks(
    layout: Layout, rules: RowRules, *, chunk_size: int = CHUNK, helper: bool | None = None
) -> Iterator[Prepared]:
    """The file's chunks, prepared. ``helper``: in a helper process (None: when the file is big).

    Close the iterator (or exhaust it) to stop the helper early.
    """
    if helper is None:
        helper = layout.data_rows >= HELPER_MIN_ROWS
    if helper:
        return _from_helper(layout, rules, chunk_size)
    return _here(layout, rules, chunk_size)


def _here(layout: Layout, rules: RowRules, chunk_size: int) -> Iterator[Prepared]:
    prepare = Preparer(rules)
    chunk: list[Row] = []
    for row in read_rows(layout):
        chunk.append(row)
        if len(chunk) >= chunk_size:
            yield prepare(chunk)
            chunk = []
    if chunk:
        yield prepare(chunk)


def _from_helper(layout: Layout, rules: RowRules, chunk_size: int) -> Iterator[Prepared]:
    package_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            [sys.executable, "-m", "broadcaster.import_rows"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            env=env,
            process_group=0,  # out of the terminal's foreground group: Ctrl-C reaches the importer only
        )
        try:
            assert proc.stdin is not None and proc.stdout is not None
            with proc.stdin:
                pickle.dump((layout, rules, chunk_size), proc.stdin)
            while True:
                item = _read_frame(proc.stdout)
                if item is None:
                    break
                kind, payload = item
                if kind == "chunk":
                    yield payload
                elif kind == "source":
                    raise SourceError(payload)
                else:
                    raise HelperFailed(f"import helper failed: {payload}")
            code = proc.wait()
            if code != 0:  # ended without saying why (killed, out of memory?)
                errors.seek(0)
                last = errors.read().decode(errors="replace").strip().splitlines()[-1:] or [""]
                raise HelperFailed(f"import helper ended with exit code {code} {last[0]}".strip())
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()  # type: ignore[union-attr]


def _read_frame(stream: BinaryIO) -> tuple[str, Any] | None:
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    (size,) = _FRAME.unpack(head)
    body = stream.read(size)
    if len(body) < size:
        return None
    return pickle.loads(body)  # noqa: S301  (our own helper, through its own pipe)


def _write_frame(stream: BinaryIO, item: tuple[str, Any]) -> None:
    body = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_FRAME.pack(len(body)))
    stream.write(body)
    stream.flush()


def _helper_main() -> int:
    out = sys.stdout.buffer
    layout, rules, chunk_size = pickle.load(sys.stdin.buffer)  # noqa: S301  (from the importer)
    try:
        for prepared in _here(layout, rules, chunk_size):
            _write_frame(out, ("chunk", prepared))
    except BrokenPipeError:
        return 1  # the importer is gone
    except SourceError as exc:
        _write_frame(out, ("source", str(exc)))
    except Exception as exc:  # the importer shows it as one line
        _write_frame(out, ("error", f"{type(exc).__name__}: {exc}"))
    with contextlib.suppress(BrokenPipeError):
        out.flush()
    return 0


if __name__ == "__main__":
    # Through the package's module, not __main__, so that pickles name broadcaster.import_rows.
    from broadcaster.import_rows import _helper_main as helper_main

    sys.exit(helper_main())
