"""The project's own error type: every user-facing failure is one of these.

The CLI catches `RftDsError`, prints its message (which names the file, line, field or sample id
and what to do) and exits with status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class RftDsError(Exception):
    """A failure caused by the user's input or environment, with a message meant for them."""


def location(path: str, line: int | None) -> str:
    """`file:line` for a line-based file (JSONL); `file: row N` for a row-based source: a Parquet
    file, or a Hugging Face data set (named `hf:NAME[SPLIT]` by rft_ds/data/sources.py); N is 1-based."""
    path = str(path)
    if line is None:
        return path
    if path.lower().endswith(".parquet") or path.startswith("hf:"):
        return f"{path}: row {line}"
    return f"{path}:{line}"


class DataError(RftDsError):
    """Bad input data: the message names file, line (or row) and field."""

    def __init__(self, path: str, line: int | None, field: str | None, problem: str, hint: str = ""):
        self.path, self.line, self.field, self.problem, self.hint = str(path), line, field, problem, hint
        where = location(self.path, line)
        what = f" field '{field}':" if field else ""
        msg = f"{where}:{what} {problem}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


class ConfigError(RftDsError):
    """A bad flag, flag combination or DeepSpeed config."""


class MasksError(RftDsError):
    """A masks file that does not fit the data or tokenizer it is used with."""
