"""Typed run configurations: each default is written once, here; the argparse flags of `train`,
`shad-train` and `label` read theirs from these dataclasses (`default_of`). `check()` is the one
validation point for combinations of flags that need no files (LLaMA-Factory's parser, smaller).
The DeepSpeed JSON is reconciled with these values in rft_ds/ds_config.py.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass

from rft_ds.errors import ConfigError

DEFAULT_LR = 1e-5
DEFAULT_TAU = 2.0  # 1/tau = 0.5, the top of the paper's robust range [0.2, 0.5]
DEFAULT_SHUFFLE_FRACTION = 0.01  # shad-train: the paper's 1% of (context -> turn) pairs
# shared by train and label (label's --max-seq-len and --logits-chunk must match the RFT run's)
DEFAULT_MAX_SEQ_LEN = 4096
DEFAULT_LOGITS_CHUNK = 1024  # loss positions per lm_head call; = estimate-memory --loss-chunk-tokens
DEFAULT_TIMEOUT_MIN = 120.0  # process-group timeout: long enough for rank 0 to write a 140 GB save
DEFAULT_LOG_EVERY_S = 30.0
DEFAULT_DATA_SPLIT = "train"  # --data-split: the split of a Hugging Face data set (rft_ds/data/sources.py)
LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
LOSSES = ("sft", "rft", "weighted", "dft", "rho1")  # docs/losses.md
CLASS_LOSSES = ("rft", "weighted")          # the losses that weight the SHAD classes: they need --masks
DEFAULT_W_REASONING = 0.5  # --loss weighted: equal class weights, RFT's tau -> infinity limit
DEFAULT_KEEP_RATIO = 0.6   # --loss rho1: Rho-1's 60% of tokens (Lin et al. 2024)


def default_of(cls, name: str):
    """The default of a config field, for argparse (`default=default_of(TrainConfig, "seed")`)."""
    f = cls.__dataclass_fields__[name]
    if f.default is MISSING:
        raise KeyError(f"{cls.__name__}.{name} has no default")
    return f.default


@dataclass
class TrainConfig:
    model: str
    data: str                            # a --data spec: file, directory, glob or hub name (rft_ds/data/sources.py)
    output: str
    deepspeed: str | None = None
    data_split: str = DEFAULT_DATA_SPLIT  # the split when --data is a Hugging Face data set
    micro_batch_size: int | None = None  # None: from the ds_config, else 1
    grad_accum: int | None = None        # None: from the ds_config, else 1
    max_steps: int | None = None
    epochs: float | None = None
    lr: float | None = None              # None: the JSON's value, else DEFAULT_LR
    weight_decay: float | None = None    # None: the JSON's value, else 0
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"         # cosine | linear | constant
    grad_clip: float | None = None       # None: the JSON's gradient_clipping, else 1.0
    seed: int = 42
    loss: str = "sft"                    # sft | rft | weighted | dft | rho1 (LOSSES)
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN
    on_overflow: str = "truncate"        # truncate | error
    save_steps: int = 0                  # 0: only the final save
    save_total_limit: int = 2
    resume: bool = False
    overwrite: bool = False
    precision: str = "auto"              # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    group_by_length: bool = True
    logits_chunk: int = DEFAULT_LOGITS_CHUNK
    grad_ckpt: bool = False
    attn_implementation: str = "sdpa"
    dist_timeout_min: float = DEFAULT_TIMEOUT_MIN
    # the tokenized-data cache (rft_ds/data/cache.py)
    cache_dir: str | None = None         # None: $RFT_DS_CACHE_DIR or ~/.cache/rft-ds/tokenized
    num_proc: int = 0                    # processes that tokenize a missing cache; 0: cores, at most 16
    no_cache: bool = False               # tokenize in memory on every rank
    # observability
    report_to: str = "none"              # none | tensorboard | wandb | csv (DeepSpeed's monitor)
    log_every_s: float = DEFAULT_LOG_EVERY_S  # plain progress line every N s when stderr is not a terminal
    peak_tflops: float | None = None     # per-device peak for MFU; default: table by GPU name (GPU only)
    # RFT
    masks: str | None = None
    tau: float = DEFAULT_TAU
    rft_granularity: str = "sample"      # sample | batch
    detach_weights: bool = True
    missing_masks: str = "error"         # error | sft
    w_reasoning: float = DEFAULT_W_REASONING  # --loss weighted: w_r = A, w_b = 1 - A
    # Rho-1
    reference: str | None = None         # --loss rho1: the reference model (HF directory, same tokenizer)
    keep_ratio: float = DEFAULT_KEEP_RATIO  # --loss rho1: share of the global batch's loss tokens trained on
    # SHAD tuning
    shuffle_fraction: float | None = None
    shuffle_seed: int = 0
    # LoRA
    lora_rank: int = 0
    lora_alpha: float | None = None
    lora_targets: str = LORA_TARGETS
    merge_lora: bool = False             # also write OUTPUT/final-merged (full model)
    command: str = ""

    def check(self) -> None:
        """Cross-field checks that need no files."""
        if (self.max_steps is None) == (self.epochs is None):
            raise ConfigError("give exactly one of --max-steps and --epochs")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError("--max-steps must be >= 1")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError("--epochs must be > 0")
        for name in ("micro_batch_size", "grad_accum"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        if self.loss not in LOSSES:
            raise ConfigError(f"--loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")
        if self.loss in CLASS_LOSSES and not self.masks:
            raise ConfigError(f"--loss {self.loss} needs --masks (from `rft-ds label`)")
        if self.tau <= 0:
            raise ConfigError("--tau must be > 0")
        if not 0.0 <= self.w_reasoning <= 1.0:
            raise ConfigError("--w-reasoning must be in [0, 1]")
        if (self.loss == "rho1") != (self.reference is not None):
            raise ConfigError("--loss rho1 needs --reference (the reference model directory)" if self.loss == "rho1"
                              else "--reference is used only with --loss rho1")
        if not 0.0 < self.keep_ratio <= 1.0:
            raise ConfigError("--keep-ratio must be in (0, 1]")
        if self.loss in CLASS_LOSSES and self.rft_granularity == "batch" and self.missing_masks == "sft":
            raise ConfigError("--missing-masks sft is supported with --rft-granularity sample only")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other")
        if self.shuffle_fraction is not None and not 0 < self.shuffle_fraction <= 1:
            raise ConfigError("--shuffle-fraction must be in (0, 1]")

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class LabelConfig:
    """`rft-ds label`: the SHAD labeling pass, or (--method regex) labels from a boilerplate regex."""
    base: str
    shad: str | None                     # required with --method shad; unused by --method regex
    data: str                            # a --data spec, as TrainConfig's
    output: str
    data_split: str = DEFAULT_DATA_SPLIT
    batch_size: int = 8                  # samples per forward pass per rank
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN
    on_overflow: str = "truncate"        # truncate | error
    margin: float = 0.0                  # label 1 iff LD > margin (paper: 0)
    deepspeed: str | None = None         # its ZeRO section is used; default ZeRO-3
    precision: str = "auto"
    logits_chunk: int = DEFAULT_LOGITS_CHUNK
    attn_implementation: str = "sdpa"
    rounds_per_chunk: int = 4            # rounds (one batch per rank) per chunk file
    overwrite: bool = False
    dist_timeout_min: float = DEFAULT_TIMEOUT_MIN
    log_every_s: float = DEFAULT_LOG_EVERY_S
    cache_dir: str | None = None         # the tokenized-data cache, as TrainConfig's
    num_proc: int = 0
    no_cache: bool = False
    method: str = "shad"                 # shad | regex (rft_ds/label/regex.py: the paper's Regex baseline)
    boilerplate_regex: str | None = None  # --method regex; None: rft_ds.label.regex.DEFAULT_PATTERN

    def check(self) -> None:
        for name in ("batch_size", "rounds_per_chunk", "max_seq_len", "logits_chunk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        if self.method not in ("shad", "regex"):
            raise ConfigError(f"--method must be shad or regex, got {self.method!r}")
        if self.method == "shad" and not self.shad:
            raise ConfigError("--method shad (the default) needs --shad, the shuffle-tuned model")
        if self.boilerplate_regex is not None:
            import re

            if self.method != "regex":
                raise ConfigError("--boilerplate-regex is used only with --method regex")
            try:
                re.compile(self.boilerplate_regex)
            except re.error as e:
                raise ConfigError(f"--boilerplate-regex {self.boilerplate_regex!r} is not a valid Python "
                                  f"regular expression: {e}") from None

    def to_json(self) -> dict:
        return asdict(self)
