"""Tokenize once: a data set's encoded samples as an Arrow table on disk, memory-mapped by every rank.

Every pass (shad-train, label, train) needs the same tokenization of the same data. Without a
cache each rank of each launch reads and tokenizes all of it into Python lists (~64 bytes a token,
measured). With it, one process per node tokenizes once with `datasets.Dataset.map(num_proc=N)`,
and every rank memory-maps the result (pyarrow alone: a reading rank does not import `datasets`): the
OS shares the pages between the ranks of a node.

    <cache_dir>/<key>/data/      a `datasets` table (save_to_disk): one row per sample, in file order
    <cache_dir>/<key>/done.json  written last: the key's parts and the encode statistics
    key = sha256(data (rft_ds/data/sources.py source_digest: every file's name and bytes in order,
                 or a hub data set's fingerprint and split), tokenizer fingerprint (vocab, special
                 tokens, chat template), max_seq_len, CACHE_VERSION)
A change in any part is a new key, so a stale cache is never read. A build happens in a temp dir
beside the target and is renamed into place only when complete, so a killed build leaves nothing
that is used (its temp dir is ignored and removed by the next build of that key).

Rows: id, line (1-based line in its file, or row of a Parquet file / data set), file (index into the
source's files, `Source.paths`: the file is not stored, so a moved data set still names its current
path), input_ids (int32), loss_runs (flattened [start, end,
message] triples: tokens start..end-1 belong to that assistant message; the rest of msg_index is -1),
n_messages, assistant_messages, truncated, n_loss_tokens, length. `EncodedTable` gives them back as
`rft_ds.data.render.Encoded`, exactly as `encode_conversation` made them.

Who builds (`cached_encode`): global rank 0 first; after a barrier, local rank 0 of every other
node builds only if it does not see the cache (no shared filesystem); after a second barrier every
rank opens it. The file:line errors of the readers are raised unchanged by the builder (and a
builder's error reaches the other ranks through the barrier's failure report).

Progress: the build shows `datasets`' own bars on stderr (the process that builds: rank 0 in a
pass): reading and checking the samples (samples read, samples/s), then tokenizing (a bar with
samples/s and ETA), unless HF_DATASETS_DISABLE_PROGRESS_BARS is set.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from array import array
from collections.abc import Sequence
from pathlib import Path

from rft_ds.data.render import EncodeStats, Encoded, encode_conversation, ensure_chat_template, tokenizer_fingerprint
from rft_ds.data.sources import Source, iter_indexed, resolve, source_digest
from rft_ds.errors import DataError
from rft_ds.fsio import fault_point, write_json

CACHE_VERSION = 2  # 2: the `file` column (several files, Parquet, hub data sets)
MIN_SAMPLES_PER_PROC = 500  # a process pool costs ~1 s to start: small data sets tokenize in one process
DEFAULT_CACHE_DIR = "~/.cache/rft-ds/tokenized"  # or RFT_DS_CACHE_DIR; --cache-dir wins


def default_cache_dir() -> str:
    return os.path.expanduser(os.environ.get("RFT_DS_CACHE_DIR") or DEFAULT_CACHE_DIR)


def resolve_num_proc(num_proc: int) -> int:
    """0 (the default): the node's cores, at most 16."""
    return num_proc if num_proc > 0 else min(os.cpu_count() or 1, 16)


def add_cache_flags(p, passes: bool = False) -> None:
    """--cache-dir and --num-proc (preprocess, train, shad-train, label); --no-cache for the passes."""
    p.add_argument("--cache-dir", default=None,
                   help=f"where tokenized data sets are kept (default: $RFT_DS_CACHE_DIR or {DEFAULT_CACHE_DIR}); "
                        "keyed by the data's files (names and bytes), the tokenizer and chat template, "
                        "and --max-seq-len")
    p.add_argument("--num-proc", type=int, default=0,
                   help="processes that tokenize a missing cache (default 0: the node's cores, at most 16)")
    if passes:
        p.add_argument("--no-cache", action="store_true",
                       help="tokenize in memory on every rank instead of reading the cache")


def cache_key(data: str | Source, tokenizer, max_seq_len: int | None) -> str:
    parts = {"data": source_digest(data), "tokenizer": tokenizer_fingerprint(tokenizer),
             "max_seq_len": max_seq_len, "version": CACHE_VERSION}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------- build
def _raw_rows(source: Source, key: str):
    """The source's samples as rows (`key` only makes the generator's fingerprint unique)."""
    for k, c in iter_indexed(source):
        yield {"id": c.id, "line": c.line, "file": k, "messages": c.messages}


def loss_runs(msg_index: list[int]) -> list[int]:
    """msg_index as flattened [start, end, message] runs of its entries >= 0."""
    out: list[int] = []
    for t, m in enumerate(msg_index):
        if m >= 0 and out and out[-1] == m and out[-2] == t:
            out[-2] = t + 1
        elif m >= 0:
            out += [t, t + 1, m]
    return out


def _msg_index(n: int, runs: list[int]) -> list[int]:
    idx = [-1] * n
    for k in range(0, len(runs), 3):
        a, b, m = runs[k: k + 3]
        idx[a:b] = [m] * (b - a)
    return idx


def _encode_rows(batch: dict, tokenizer, max_seq_len: int | None, paths: tuple[str, ...]) -> dict:
    from rft_ds.data.formats import Conversation

    cols: dict[str, list] = {k: [] for k in ("id", "line", "file", "input_ids", "loss_runs", "n_messages",
                                             "assistant_messages", "truncated", "n_loss_tokens", "length")}
    for sid, line, f, msgs in zip(batch["id"], batch["line"], batch["file"], batch["messages"]):
        e = encode_conversation(Conversation(sid, msgs, paths[f], line), tokenizer, max_seq_len)
        for k, v in (("id", sid), ("line", line), ("file", f), ("input_ids", e.input_ids),
                     ("loss_runs", loss_runs(e.msg_index)),
                     ("n_messages", e.n_messages), ("assistant_messages", e.assistant_messages),
                     ("truncated", e.truncated), ("n_loss_tokens", e.n_loss_tokens), ("length", len(e.input_ids))):
            cols[k].append(v)
    return cols


def build_cache(data: str | Source, tokenizer, max_seq_len: int | None, target: Path, num_proc: int = 1) -> None:
    """Tokenize `data` into `target` (see the module docstring). Raises the reader's DataError."""
    import datasets
    from datasets import Features, Sequence as Seq, Value

    source = resolve(data)
    ensure_chat_template(tokenizer)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f"{target.name}.tmp-*"):  # a killed build of this key
        if time.time() - stale.stat().st_mtime > 24 * 3600:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = target.parent / f"{target.name}.tmp-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.time()
    try:
        try:
            raw = datasets.Dataset.from_generator(_raw_rows, gen_kwargs={"source": source, "key": target.name},
                                                  cache_dir=str(tmp / "work"))
        except datasets.exceptions.DatasetGenerationError as e:
            raise (e.__cause__ or e) from None  # the reader's own file:line error
        feats = Features({"id": Value("string"), "line": Value("int64"), "file": Value("int32"),
                          "input_ids": Seq(Value("int32")),
                          "loss_runs": Seq(Value("int32")), "n_messages": Value("int32"),
                          "assistant_messages": Seq(Value("int32")), "truncated": Value("bool"),
                          "n_loss_tokens": Value("int64"), "length": Value("int64")})
        num_proc = max(1, min(resolve_num_proc(num_proc), len(raw) // MIN_SAMPLES_PER_PROC))
        enc = raw.map(_encode_rows, batched=True, batch_size=256, num_proc=num_proc if num_proc > 1 else None,
                      fn_kwargs={"tokenizer": tokenizer, "max_seq_len": max_seq_len, "paths": source.paths},
                      remove_columns=raw.column_names, features=feats, new_fingerprint=f"{target.name}-enc",
                      desc=f"rft-ds preprocess ({num_proc} proc)")
        enc.save_to_disk(str(tmp / "data"))
        n_tok = sum(enc["length"])
        write_json(tmp / "done.json", {"data": source.spec, "files": list(source.paths), "split": source.split,
                                       "tokenizer": tokenizer_fingerprint(tokenizer),
                                       "max_seq_len": max_seq_len, "version": CACHE_VERSION, "samples": len(enc),
                                       "tokens": n_tok, "seconds": round(time.time() - t0, 2),
                                       "num_proc": num_proc})
        del raw, enc
        shutil.rmtree(tmp / "work", ignore_errors=True)
        fault_point("preprocess-built", 1)  # crash tests: complete in tmp, not yet renamed
        try:
            os.rename(tmp, target)
        except OSError:  # another node on a shared filesystem finished the same key first
            if not (target / "done.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_complete(target: Path) -> bool:
    return (target / "done.json").is_file() and (target / "data").is_dir()


# ---------------------------------------------------------------------------------------------- read
class EncodedTable(Sequence):
    """The cached samples as a read-only sequence of `Encoded` (memory-mapped; rows made on access).
    `rows` selects and orders the samples (default: all, in file order). `set_classes` stores the
    per-token classes of the masks join compactly (1 byte a token)."""

    def __init__(self, target: Path, rows: list[int] | None = None):
        import pyarrow as pa

        self.path = Path(target)
        # the Arrow IPC stream files `save_to_disk` wrote, memory-mapped with pyarrow alone (a reading
        # rank does not import `datasets`: ~2 s of start-up per process)
        files = sorted((self.path / "data").glob("data-*.arrow"))
        self.table = pa.concat_tables([pa.ipc.open_stream(pa.memory_map(str(f))).read_all() for f in files])
        self.rows = list(range(self.table.num_rows)) if rows is None else rows
        lengths = self.table.column("length").to_pylist()
        self.lengths = [lengths[r] for r in self.rows]
        self._classes: list[array | None] = [None] * len(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        r = self._row(self.rows[i])
        c = self._classes[i]
        return Encoded(id=r["id"], input_ids=r["input_ids"], msg_index=_msg_index(r["length"], r["loss_runs"]),
                       n_messages=r["n_messages"], assistant_messages=r["assistant_messages"],
                       truncated=r["truncated"], classes=None if c is None else c.tolist())

    def _row(self, r: int) -> dict:
        return self.table.slice(r, 1).to_pylist()[0]

    @property
    def ids(self) -> list[str]:
        return self.column("id")

    def set_classes(self, i: int, classes: list[int]) -> None:
        self._classes[i] = array("b", classes)

    def column(self, name: str) -> list:
        col = self.table.column(name).to_pylist()
        return [col[r] for r in self.rows]

    def select(self, rows: list[int]) -> "EncodedTable":
        out = object.__new__(EncodedTable)
        out.path, out.table = self.path, self.table
        out.rows = [self.rows[i] for i in rows]
        out.lengths = [self.lengths[i] for i in rows]
        out._classes = [self._classes[i] for i in rows]
        return out


def stats_of(table: EncodedTable, kept: list[int]) -> EncodeStats:
    truncated, n_loss = table.column("truncated"), table.column("n_loss_tokens")
    return EncodeStats(samples=len(kept), truncated=sum(truncated), dropped_no_loss_tokens=len(table) - len(kept),
                       loss_tokens=sum(n_loss[i] for i in kept), tokens=sum(table.lengths[i] for i in kept))


def check_overflow(table: EncodedTable, data: str | Source, max_seq_len: int | None) -> None:
    """`--on-overflow error`: the first truncated sample, named by file and line as the reader does."""
    for i, t in enumerate(table.column("truncated")):
        if t:
            r = table._row(table.rows[i])
            raise DataError(resolve(data).paths[r["file"]], r["line"], "messages", f"sample {r['id']!r} is longer "
                            f"than --max-seq-len {max_seq_len} tokens", "raise --max-seq-len, or pass --on-overflow truncate")


def open_cache(data: str | Source, tokenizer, max_seq_len: int | None, cache_dir: str | None = None,
               num_proc: int = 1, log=print) -> EncodedTable:
    """Single process: build the cache if it is missing, then open it. `data`: a --data spec (a hub
    data set's split: resolve it to a Source first, rft_ds/data/sources.py)."""
    source = resolve(data)
    target = Path(cache_dir or default_cache_dir()) / cache_key(source, tokenizer, max_seq_len)
    if not is_complete(target):
        log(f"data: tokenizing {source.describe()} into {target} (once; later launches reuse it)")
        build_cache(source, tokenizer, max_seq_len, target, num_proc)
    else:
        log(f"data: using the tokenized cache {target}")
    return EncodedTable(target)
