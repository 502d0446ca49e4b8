"""Streaming readers of raw record files: a JSON array read element by element, or JSON Lines.

A file whose first non-blank character is `[` is read as one JSON array, element by element
(`json.JSONDecoder.raw_decode` over a buffered text reader; the released ToolBench and APIGen files
are single multi-GB arrays); a file starting with `{` is read as JSON Lines. A file that is neither,
or an array that is not valid JSON, is a DataError (an array cannot be resynced after a syntax
error); a JSONL line that is not JSON comes back as a record with `error` set (`rft-ds convert`
skips and counts it), unlike rft_ds.fsio.iter_jsonl, which raises.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import IO, Iterator

from rft_ds.errors import DataError

CHUNK_CHARS = 1 << 20
_DECODER = json.JSONDecoder()


@dataclass
class RawRecord:
    number: int        # 1-based position in the input (array element or JSONL record)
    line: int          # 1-based line where it starts
    value: object = None
    error: str | None = None  # a JSONL line that is not JSON


class _ArrayReader:
    """Yield the elements of one top-level JSON array without holding the whole file."""

    def __init__(self, f: IO[str], path: str, chunk: int | None = None):
        self.f, self.path, self.chunk = f, path, chunk or CHUNK_CHARS
        self.buf, self.pos, self.eof = "", 0, False
        self.line_no, self.line_pos = 1, 0  # line number of buf[line_pos]

    def _fill(self, n: int | None = None) -> None:
        if self.pos:  # drop consumed text, keeping line accounting
            self._line_at(self.pos)
            self.buf, self.line_pos, self.pos = self.buf[self.pos:], 0, 0
        data = self.f.read(max(n or self.chunk, self.chunk))
        if not data:
            self.eof = True
        self.buf += data

    def _line_at(self, pos: int) -> int:
        if pos > self.line_pos:
            self.line_no += self.buf.count("\n", self.line_pos, pos)
            self.line_pos = pos
        return self.line_no

    def _skip_ws(self) -> bool:
        """Advance past whitespace; False at end of input."""
        while True:
            n = len(self.buf)
            while self.pos < n and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < n:
                return True
            if self.eof:
                return False
            self._fill()

    def _error(self, pos: int, problem: str, hint: str = "") -> DataError:
        return DataError(self.path, self._line_at(pos), None, problem, hint)

    def __iter__(self) -> Iterator[RawRecord]:
        self._skip_ws()
        if self.buf[self.pos] != "[":
            raise self._error(self.pos, "expected a JSON array")
        self.pos += 1
        number = 0
        while True:
            if not self._skip_ws():
                raise self._error(self.pos, "unterminated JSON array (missing ']')", "is the file truncated?")
            c = self.buf[self.pos]
            if c == "]":
                self.pos += 1
                if self._skip_ws():
                    raise self._error(self.pos, "text after the end of the JSON array")
                return
            if number:
                if c != ",":
                    raise self._error(self.pos, f"expected ',' or ']' between array elements, got {c!r}")
                self.pos += 1
                if not self._skip_ws():
                    raise self._error(self.pos, "unterminated JSON array (missing ']')", "is the file truncated?")
            start = self.pos
            while True:
                try:
                    value, end = _DECODER.raw_decode(self.buf, self.pos)
                except RecursionError:
                    raise self._error(self.pos, "not valid JSON: nested too deeply",
                                      "the array cannot be read past this record") from None
                except json.JSONDecodeError as e:
                    near_end = e.msg.startswith("Unterminated string") or e.pos >= len(self.buf) - 16
                    if self.eof or not near_end:
                        hint = ("the file ends inside this record: is it truncated?" if self.eof and near_end
                                else "the array cannot be read past a syntax error")
                        raise self._error(e.pos, f"not valid JSON: {e.msg}", hint) from None
                    self._fill(len(self.buf) - self.pos)  # grow geometrically for huge elements
                    start = self.pos
                    continue
                if end >= len(self.buf) and not self.eof:  # a number could continue in the next chunk
                    self._fill(len(self.buf) - self.pos)
                    start = self.pos
                    continue
                break
            number += 1
            line = self._line_at(start)
            self.pos = end
            yield RawRecord(number=number, line=line, value=value)


def _iter_jsonl(f: IO[str]) -> Iterator[RawRecord]:
    number = 0
    for lineno, raw in enumerate(f, start=1):
        if not raw.strip():
            continue
        number += 1
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as e:
            yield RawRecord(number=number, line=lineno, error=f"{e.msg} at column {e.colno}")
            continue
        except RecursionError:
            yield RawRecord(number=number, line=lineno, error="nested too deeply")
            continue
        yield RawRecord(number=number, line=lineno, value=value)


def iter_records(path: str | os.PathLike) -> Iterator[RawRecord]:
    """Stream the records of a JSON-array or JSON-Lines file (see the module docstring)."""
    path = str(path)
    if not os.path.isfile(path):
        raise DataError(path, None, None, "file not found")
    try:
        with open(path, encoding="utf-8-sig") as f:
            # Sniff the first non-blank character by chunks (a released array may be one huge line).
            head, lineno = "", 1
            while True:
                data = f.read(min(4096, CHUNK_CHARS))
                if not data:
                    raise DataError(path, None, None, "empty file: no records")
                stripped = data.lstrip()
                if stripped:
                    lineno += data.count("\n", 0, len(data) - len(stripped))
                    first, head = stripped[0], stripped
                    break
                lineno += data.count("\n")
            if first == "[":
                reader = _ArrayReader(f, path)
                reader.buf, reader.line_no = head, lineno
                yield from reader
                return
            if first != "{":
                raise DataError(path, lineno, None, f"not JSON: starts with {first!r}",
                                "expected a JSON array ('[') or JSON Lines (one '{...}' object per line)")
        with open(path, encoding="utf-8-sig") as f:
            for rec in _iter_jsonl(f):
                if rec.error is not None and rec.number == 1:  # e.g. a pretty-printed single object
                    raise DataError(path, rec.line, None, f"not JSON Lines: malformed JSON ({rec.error})",
                                    "expected a JSON array or one JSON object per line")
                yield rec
    except UnicodeDecodeError as e:
        raise DataError(path, None, None, f"not UTF-8 text: {e}") from None
