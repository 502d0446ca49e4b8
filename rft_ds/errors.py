"""The project's own error type: every user-facing failure is one of these.

The CLI catches `RftDsError`, prints its message (which names the file, line, field or sample id
and what to do) and exits with status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class RftDsError(Exception):
    """A failure caused by the user's input or environment, with a message meant for them."""


class DataError(RftDsError):
    """Bad input data: the message names file, line and field."""

    def __init__(self, path: str, line: int | None, field: str | None, problem: str, hint: str = ""):
        self.path, self.line, self.field, self.problem = str(path), line, field, problem
        where = self.path + (f":{line}" if line is not None else "")
        what = f" field '{field}':" if field else ""
        msg = f"{where}:{what} {problem}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


class ConfigError(RftDsError):
    """A bad flag, flag combination or DeepSpeed config."""


class MasksError(RftDsError):
    """A masks file that does not fit the data or tokenizer it is used with."""
