"""What `--data` names, resolved in one place: every pass that reads the training data reads it here.

    FILE.jsonl (any name)  the JSONL reader of rft_ds/data/formats.py, unchanged (ids, file:line errors)
    FILE.parquet           columns `messages` (OpenAI) or `conversations` (ShareGPT), optional `id`;
                           other columns are ignored. Each row is validated as a JSONL line is, and
                           errors name `file: row N` (1-based) and the field. A null cell is an absent
                           key (a null id gets the default id, as `"id": null` does in JSONL).
    DIR                    every *.jsonl and *.parquet directly in DIR (not in subdirectories; names
                           starting with "." are skipped), in name order. A directory with none of
                           them is handed to `datasets.load_dataset(DIR, split=--data-split)` (a local
                           copy of a hub data set repository, e.g. `data/train-*.parquet`).
    GLOB                   'data/part-*.jsonl' (`**` spans directories): the matching files, sorted
    NAME or ORG/NAME       not an existing path: `datasets.load_dataset(NAME, split=--data-split)`,
                           rows validated as Parquet rows, named `hf:NAME[SPLIT]: row N`

A sample without an id gets `<file stem>-<line or row>` (a hub data set: `<NAME's last part>-<row>`).
Ids must be unique across all files: a repeat names both places. The cache key of a source
(`source_digest`) covers every file's name and bytes in order (a changed, added or removed file is a
new cache); for a data set loaded by `datasets`, its `_fingerprint` and the split.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from rft_ds.data.formats import Conversation, iter_conversations, parse_sample, unique_samples
from rft_ds.errors import ConfigError, DataError, location

DEFAULT_SPLIT = "train"
DATA_SUFFIXES = (".jsonl", ".parquet")
ROW_BATCH = 1024  # rows decoded at a time from a Parquet file or a loaded data set
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
DATA_HELP = ("training data: a JSONL or Parquet file (OpenAI messages or ShareGPT), a directory of them, "
             "a quoted glob ('data/part-*.jsonl'), or a Hugging Face data set name (--data-split)")
SPLIT_HELP = "the split of a Hugging Face data set given as --data (default %(default)s); unused for files"


@dataclass(frozen=True)
class Source:
    """A resolved --data: `files` (read in this order) or `hub` (a name or directory for
    `datasets.load_dataset`, with `split`)."""
    spec: str
    files: tuple[str, ...] = ()
    hub: str | None = None
    split: str = DEFAULT_SPLIT

    @property
    def paths(self) -> tuple[str, ...]:
        """The name of each part, as errors give it; a cache row's `file` indexes this."""
        return (f"hf:{self.hub}[{self.split}]",) if self.hub is not None else self.files

    def describe(self) -> str:
        if self.hub is not None:
            return self.paths[0]
        return self.files[0] if len(self.files) == 1 else f"{self.spec} ({len(self.files)} files)"


def resolve(spec: str | os.PathLike | Source, split: str = DEFAULT_SPLIT) -> Source:
    """--data as a Source; nothing is read yet. A spec that is no existing file or directory, matches
    no file as a glob and cannot be a hub name is a ConfigError naming it."""
    if isinstance(spec, Source):
        return spec
    spec = str(spec)
    if os.path.isfile(spec):
        return Source(spec, files=(spec,), split=split)
    if os.path.isdir(spec):
        found = sorted(p.name for p in Path(spec).iterdir()
                       if p.suffix in DATA_SUFFIXES and not p.name.startswith(".") and p.is_file())
        if found:
            return Source(spec, files=tuple(os.path.join(spec, n) for n in found), split=split)
        return Source(spec, hub=spec, split=split)
    if glob.has_magic(spec):
        found = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))  # `**`: any depth
        if not found:
            raise ConfigError(f"--data {spec!r}: no file matches this glob")
        return Source(spec, files=tuple(found), split=split)
    if HUB_NAME.fullmatch(spec) and not spec.endswith((*DATA_SUFFIXES, ".json")):
        return Source(spec, hub=spec, split=split)
    raise ConfigError(f"--data {spec!r}: no such file or directory, no glob pattern, and not a Hugging Face "
                      "data set name (NAME or ORG/NAME)")


# ---------------------------------------------------------------------------------------------- rows
def iter_indexed(source: Source) -> Iterator[tuple[int, Conversation]]:
    """(index into source.paths, sample) for every sample, in order; ids unique across the files."""
    if source.hub is not None:
        for conv in _iter_hub(source):
            yield 0, conv
        return
    first: dict[str, tuple[int, int]] = {}
    for k, path in enumerate(source.files):
        for conv in iter_file(path):
            if len(source.files) > 1:  # a single file's reader checks its own ids
                prev = first.setdefault(conv.id, (k, conv.line))
                if prev != (k, conv.line):
                    raise DataError(conv.path, conv.line, "id", f"duplicate id {conv.id!r} (first at "
                                    f"{location(source.files[prev[0]], prev[1])})",
                                    "ids must be unique across every file of --data: masks are joined by id")
            yield k, conv


def iter_source(source: Source | str) -> Iterator[Conversation]:
    for _, conv in iter_indexed(resolve(source)):
        yield conv


def read_source(source: Source | str) -> list[Conversation]:
    return list(iter_source(source))


def iter_file(path: str) -> Iterator[Conversation]:
    """One file: Parquet by its suffix, anything else as JSONL (as --data always read it)."""
    if str(path).lower().endswith(".parquet"):
        return _iter_rows(_parquet_batches(str(path)), str(path), Path(path).stem, "empty file: no samples")
    return iter_conversations(path)


def _iter_rows(batches, path: str, stem: str, empty: str) -> Iterator[Conversation]:
    """Samples from batches of row dicts (rows numbered from 1), validated as JSONL lines are."""
    rows = enumerate((obj for batch in batches for obj in batch), 1)
    # a null cell is an absent key
    convs = (parse_sample({k: v for k, v in obj.items() if v is not None}, path, n, stem=stem) for n, obj in rows)
    return unique_samples(convs, path, "row", empty)


def _columns(path: str, names: list[str]) -> list[str]:
    cols = [c for c in ("id", "messages", "conversations") if c in names]
    if "messages" not in cols and "conversations" not in cols:
        raise DataError(path, None, "messages", f"no 'messages' (OpenAI format) or 'conversations' (ShareGPT "
                        f"format) column; the columns are {names}")
    return cols


def _parquet_batches(path: str) -> Iterator[list[dict]]:
    """The rows of a Parquet file, ROW_BATCH at a time, only the columns read (pyarrow alone)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(path, None, None, f"not a readable Parquet file ({e})") from None
    cols = _columns(path, f.schema_arrow.names)
    try:
        for batch in f.iter_batches(batch_size=ROW_BATCH, columns=cols):
            yield batch.to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise DataError(path, None, None, f"unreadable Parquet data ({e})") from None


# ------------------------------------------------------------------------------------------------ hub
def load_hub(source: Source):
    """`datasets.load_dataset(source.hub, split=source.split)`; any failure is a ConfigError naming
    the spec (no network, unknown name or split, a directory `datasets` cannot read)."""
    import datasets

    try:
        ds = datasets.load_dataset(source.hub, split=source.split)
    except Exception as e:  # noqa: BLE001 (whatever the loader raises, the user's spec is the cause)
        what = ("a directory with no *.jsonl or *.parquet file in it" if os.path.isdir(source.spec) else
                "not an existing file, directory or glob match")
        raise ConfigError(f"--data {source.spec!r}: {what}, and datasets.load_dataset({source.hub!r}, "
                          f"split={source.split!r}) failed: {type(e).__name__}: {e}") from None
    if not isinstance(ds, datasets.Dataset):
        raise ConfigError(f"--data {source.spec!r}: load_dataset gave a {type(ds).__name__}, not one split "
                          "(pass --data-split)")
    return ds


def _iter_hub(source: Source) -> Iterator[Conversation]:
    ds = load_hub(source)
    label = source.paths[0]
    cols = _columns(label, ds.column_names)
    batches = ([dict(zip(b, row)) for row in zip(*b.values())]
               for b in ds.select_columns(cols).iter(batch_size=ROW_BATCH))
    stem = Path(source.hub.rstrip("/")).name
    return _iter_rows(batches, label, stem, f"split {source.split!r} has no samples")


# ---------------------------------------------------------------------------------------------- key
def source_digest(source: Source | str) -> str:
    """sha256 of every file's name and bytes in order; for a loaded data set, of its fingerprint and
    split. Any change of content, name, order or number of files changes it."""
    from rft_ds.fsio import file_digest

    source = resolve(source)
    if source.hub is not None:
        parts = {"hub": source.hub, "split": source.split, "fingerprint": load_hub(source)._fingerprint}
    else:
        parts = {"files": [[Path(f).name, file_digest(f, 64)] for f in source.files]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def data_identity(source: Source | str) -> str:
    """A short identity of the data for a work-dir manifest: a single file's 16-hex digest, as the
    label pass always recorded it; otherwise the source digest's first 16 hex digits."""
    from rft_ds.fsio import file_digest

    source = resolve(source)
    if len(source.files) == 1:
        return file_digest(source.files[0])
    return source_digest(source)[:16]
