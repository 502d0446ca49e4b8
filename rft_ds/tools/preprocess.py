"""`rft-ds preprocess`: tokenize a data set once into the cache that `shad-train`, `label` and
`train` read (rft_ds/data/cache.py). Optional: the passes build the cache themselves when it is
missing. Running it first (on a login node, or a CPU job with many cores) keeps the tokenizing off
the GPUs' clock:

    rft-ds preprocess --model MODEL_DIR --data train.jsonl --max-seq-len 4096 --num-proc 32

`--data` is any spec the passes take (rft_ds/data/sources.py: a JSONL or Parquet file, a directory,
a glob, a Hugging Face data set with --data-split). The build shows `datasets`' progress bars
(samples read, then tokenizing with samples/s and ETA).
"""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    import json
    import time

    from rft_ds.data.cache import open_cache
    from rft_ds.data.sources import resolve
    from rft_ds.modeling import load_tokenizer

    t0 = time.time()
    source = resolve(args.data, args.data_split)
    table = open_cache(source, load_tokenizer(args.model), args.max_seq_len, args.cache_dir, args.num_proc)
    done = json.loads((table.path / "done.json").read_text())
    print(f"preprocess: {table.path}: {done['samples']} samples, {done['tokens']} tokens "
          f"(built in {done['seconds']:.1f}s with {done['num_proc']} processes; this call {time.time() - t0:.1f}s)",
          flush=True)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from rft_ds.config import DEFAULT_DATA_SPLIT, DEFAULT_MAX_SEQ_LEN
    from rft_ds.data.cache import add_cache_flags
    from rft_ds.data.sources import DATA_HELP, SPLIT_HELP

    p = sub.add_parser("preprocess", help="tokenize a data set once into the cache the passes memory-map")
    p.add_argument("--model", required=True, help="model directory whose tokenizer and chat template to use")
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--data-split", default=DEFAULT_DATA_SPLIT, help=SPLIT_HELP)
    p.add_argument("--max-seq-len", type=int, default=DEFAULT_MAX_SEQ_LEN,
                   help="must equal the passes' --max-seq-len (it is part of the cache key)")
    add_cache_flags(p)
    p.set_defaults(func=run)
