"""The one place a pass claims its output, gets its tokenized data and builds its DeepSpeed engine
(train and label alike).

    claim_output(...)   rank 0 decides whether the output may be written (a finished run is never
                        overwritten without --overwrite / --resume), every rank follows
    tokenized(...)      the data, tokenized once into the cache and memory-mapped on every rank
                        (rft_ds/data/cache.py), or in memory with --no-cache
    build_engine(...)   from_pretrained under the DeepSpeed config (ZeRO-3: weights load straight
                        into partitions), optional LoRA, the per-token-loss wrapper, deepspeed.initialize
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, NamedTuple

from rft_ds import dist
from rft_ds.errors import ConfigError, DataError, RftDsError


def claim_output(held: list[Path], clear: list[Path], *, overwrite: bool, refusal: str,
                 allow: bool = False, mkdir: Path | None = None) -> None:
    """Refuse (ConfigError `refusal`) when any of `held` exists, unless `overwrite` (then every path
    in `clear` is removed first) or `allow` (e.g. --resume). Decided on rank 0 and broadcast, so
    every rank raises the same error or none; on a shared filesystem only rank 0 touches it."""
    err = None
    if dist.is_main():
        if any(p.exists() for p in held) and not (overwrite or allow):
            err = refusal
        elif overwrite:
            for p in clear:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        if mkdir is not None:
            mkdir.mkdir(parents=True, exist_ok=True)
    err = dist.broadcast_object(err)
    if err:
        raise ConfigError(err)


class CacheSpec(NamedTuple):
    """How a pass gets its tokenized data: the cache flags, and --data-split (a hub data set's split)."""
    use: bool = True
    dir: str | None = None    # None: $RFT_DS_CACHE_DIR or ~/.cache/rft-ds/tokenized
    num_proc: int = 1
    split: str = "train"      # --data-split: used when --data names a Hugging Face data set

    @classmethod
    def of(cls, cfg) -> "CacheSpec":
        return cls(not cfg.no_cache, cfg.cache_dir, cfg.num_proc, cfg.data_split)


def tokenized(data: str, tok, max_seq_len: int | None, on_overflow: str, cache: CacheSpec,
              keep_empty: bool = False):
    """Every sample of `data` (a --data spec: rft_ds/data/sources.py) encoded (a sequence of
    Encoded with `.lengths`) and EncodeStats. Samples that truncation left without a loss token are
    dropped unless `keep_empty` (label keeps them: its records cover every input id).
    `on_overflow="error"` raises at the first truncated sample, naming its file and line, either way."""
    from rft_ds.data.cache import check_overflow, stats_of
    from rft_ds.data.render import encode_dataset
    from rft_ds.data.sources import read_source, resolve

    source = resolve(data, cache.split)
    if not cache.use:
        return encode_dataset(read_source(source), tok, max_seq_len, on_overflow, keep_empty=keep_empty)
    table = _shared_cache(source, tok, max_seq_len, cache)
    if on_overflow == "error":
        check_overflow(table, source, max_seq_len)
    keep = list(range(len(table))) if keep_empty else \
        [i for i, n in enumerate(table.column("n_loss_tokens")) if n > 0]
    if not keep:
        raise DataError(source.describe(), None, None, "no sample has an assistant token left after truncation",
                        "raise --max-seq-len")
    return table.select(keep), stats_of(table, keep)


def _shared_cache(data, tok, max_seq_len: int | None, spec: CacheSpec):
    """Rank 0 builds a missing cache; then the local rank 0 of any node that still does not see it
    (no shared filesystem); then every rank opens it. A builder's error is raised on every rank."""
    from rft_ds.data import cache

    key = err = None
    if dist.is_main():  # reads every file (or loads the hub data set): rank 0 alone
        try:
            key = cache.cache_key(data, tok, max_seq_len)
        except RftDsError as e:
            err = e
    key, msg = dist.broadcast_object((key, None if err is None else str(err)))
    if err is not None:
        raise err
    if msg:
        raise RftDsError(msg)
    target = Path(spec.dir or cache.default_cache_dir()) / key
    for builds in (dist.is_main(), dist.local_rank() == 0 and not dist.is_main()):
        err = None
        if builds and not cache.is_complete(target):
            print(f"data: rank {dist.rank()} tokenizing {data.describe()} into {target} (once: later launches reuse it)",
                  flush=True)
            try:
                cache.build_cache(data, tok, max_seq_len, target, spec.num_proc)
            except RftDsError as e:
                err = e
        errors = [m for m in dist.all_gather_object(None if err is None else str(err)) if m]
        if err is not None:
            raise err
        if errors:
            raise RftDsError(errors[0])
    dist.log(f"data: tokenized cache {target}")
    return cache.EncodedTable(target)


class Built(NamedTuple):
    engine: object        # the DeepSpeed engine around TokenLossModel
    hf: object            # the Hugging Face model (for its config and the final save)
    lm: object            # what was wrapped: hf, or its peft LoRA model
    hf_ds_config: object  # HfDeepSpeedConfig: keep it alive while the model is used under ZeRO-3


class LoraSpec(NamedTuple):
    rank: int
    alpha: float | None
    targets: str


def build_engine(model_dir: str, ds: dict, precision: str, *, logits_chunk: int, attn: str,
                 lora: LoraSpec | None = None, grad_ckpt: bool = False,
                 optimizer: Callable | None = None, scheduler: Callable | None = None) -> Built:
    """Load `model_dir` under `ds` and wrap it in a DeepSpeed engine. Without `optimizer` (a
    function of the trainable parameters; only where the JSON has no optimizer section) an
    inference engine in eval mode is returned."""
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    from rft_ds.modeling import TokenLossModel, load_causal_lm

    keep = HfDeepSpeedConfig(ds) if ds.get("zero_optimization", {}).get("stage") == 3 else None
    hf = load_causal_lm(model_dir, precision, attn)
    if grad_ckpt:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm = hf
    if lora is not None and lora.rank > 0:
        from peft import LoraConfig, get_peft_model

        lm = get_peft_model(hf, LoraConfig(r=lora.rank, lora_alpha=lora.alpha or 2 * lora.rank,
                                           target_modules=lora.targets.split(","), lora_dropout=0.0,
                                           task_type="CAUSAL_LM"))
        if grad_ckpt:
            hf.enable_input_require_grads()
    model = TokenLossModel(lm, logits_chunk)
    training = "optimizer" in ds or optimizer is not None
    if training:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = optimizer(params) if optimizer is not None and "optimizer" not in ds else None
        engine, *_ = deepspeed.initialize(model=model, model_parameters=params, optimizer=opt, config=ds,
                                          lr_scheduler=None if "scheduler" in ds else scheduler)
    else:
        engine, *_ = deepspeed.initialize(model=model, config=ds)
        engine.eval()
    engine.module.check_logits(engine.device, precision)
    return Built(engine, hf, lm, keep)
