"""The recipes: one thin, valid shell script per pass (recipes/<pass>.sh) whose one `deepspeed` line
parses as an rft-ds command for every model file (recipes/models/<model>.env); common.sh loads the
model and forwards the environment; the tiny recipes run end to end here (shad -> label -> rft, sft
baseline) through the real launcher with hostfiles/localhost; and the CPU-offload DeepSpeed config
runs a step."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from launchutil import ROOT, env, free_port, head_lines, metrics, rel

MODELS = ["tiny", "llama3-8b", "llama3-70b", "qwen2.5-72b"]
PASSES = ["1_shad.sh", "2_label.sh", "3_rft.sh", "sft_baseline.sh"]
RECIPES = [(m, p) for m in MODELS for p in PASSES]
COMMAND = {"1_shad.sh": "shad-train", "2_label.sh": "label", "3_rft.sh": "train", "sft_baseline.sh": "train"}
SETTING = re.compile(r'^: "\$\{[A-Z_][A-Z0-9_]*:?=')


def _deepspeed_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip().startswith("deepspeed ")]


@pytest.mark.parametrize("recipe", PASSES)
def test_recipe_is_thin_and_valid(recipe):
    path = ROOT / "recipes" / recipe
    text = path.read_text()
    subprocess.run(["bash", "-n", str(path)], check=True)
    assert 'source "$(dirname "$0")/common.sh" "$@"' in text
    assert len(_deepspeed_lines(text)) == 1, "exactly one deepspeed line"
    assert 'deepspeed --hostfile "$HOSTFILE" "${LAUNCH_ARGS[@]}" --module rft_ds ' in text
    # the pass's own settings come after common.sh (the model file wins) and are all overridable
    body = text.split("common.sh", 1)[1].split("\ndeepspeed ", 1)[0].splitlines()[1:]
    settings = [ln for ln in body if ln and not ln.startswith("#")]
    assert all(SETTING.match(ln) or ln.startswith("[[ ") for ln in settings), settings
    assert not any(re.match(r"^\s*[A-Za-z_]\w*=", ln) for ln in text.splitlines()), "plain assignments"
    assert os.access(path, os.X_OK)
    assert len(text.splitlines()) <= 45, "a recipe reads in one screen"


@pytest.mark.parametrize("model", MODELS)
def test_model_file_is_only_overridable_variables(model):
    """A model is its variables: every line of recipes/models/<model>.env is a comment or a
    `: "${NAME:=value}"` default that the environment overrides."""
    lines = (ROOT / "recipes" / "models" / f"{model}.env").read_text().splitlines()
    settings = [ln for ln in lines if ln and not ln.startswith("#")]
    assert settings and all(SETTING.match(ln) for ln in settings), settings


def _fake_deepspeed(tmp_path: Path) -> tuple[Path, Path]:
    """A `deepspeed` on PATH that records its argv and the DS_ENV_FILE's text instead of launching."""
    import sys

    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls.jsonl"
    fake = bindir / "deepspeed"
    fake.write_text(f"#!{sys.executable}\n"
                    "import json, os, sys\n"
                    "rec = {'argv': sys.argv[1:], 'ds_env_file': open(os.environ['DS_ENV_FILE']).read()}\n"
                    "open(os.environ['FAKE_DS_LOG'], 'a').write(json.dumps(rec) + '\\n')\n")
    fake.chmod(0o755)
    return bindir, log


def _run_pass(recipe: str, model: str, e: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "recipes" / recipe), model], env=e, cwd=cwd, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("model,recipe", RECIPES)
def test_recipe_command_parses(model, recipe, tmp_path):
    """Run the recipe with a recording `deepspeed`: the launcher flags are right and the rft-ds
    command after `--module rft_ds` parses (train commands also pass TrainConfig.check)."""
    from rft_ds.cli import build_parser
    from rft_ds.train.cli import config_from_args

    bindir, log = _fake_deepspeed(tmp_path)
    e = env({"PATH": f"{bindir}{os.pathsep}{env()['PATH']}", "FAKE_DS_LOG": str(log),
             "OUT": str(tmp_path / "out"), "MODEL": str(tmp_path / "model")})
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")  # the tiny 1_shad.sh builds a missing model
    for k in ("HOSTFILE", "LAUNCH_EXTRA", "MASTER_ADDR", "EXTRA_ARGS", "MAX_STEPS", "EPOCHS", "DS_CONFIG"):
        e.pop(k, None)
    r = _run_pass(recipe, model, e, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    calls = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(calls) == 1
    argv = calls[0]["argv"]
    assert argv[0] == "--hostfile" and Path(ROOT, argv[1]).is_file()
    assert "--master_port" in argv
    i = argv.index("--module")
    assert argv[i + 1] == "rft_ds"
    args = build_parser().parse_args(argv[i + 2:])
    assert args.command == COMMAND[recipe]
    if args.command in ("train", "shad-train"):
        cfg = config_from_args(args)
        cfg.check()
        assert Path(ROOT, cfg.deepspeed).is_file()
        if model != "tiny":
            assert cfg.grad_ckpt and cfg.precision == "bf16" and cfg.epochs
        if recipe == "3_rft.sh":
            assert cfg.loss == "rft" and cfg.masks.endswith("masks.jsonl")
        if recipe == "sft_baseline.sh":
            assert cfg.loss == "sft" and cfg.masks.endswith("masks.jsonl")
    else:
        assert args.shad.endswith("shad/final") and args.output.endswith("masks.jsonl")
        assert Path(ROOT, args.deepspeed).is_file()
    # variables from the environment win over the recipe's defaults
    e2 = dict(e, EXTRA_ARGS="--seed 5", MAX_STEPS="7", LAUNCH_EXTRA="--include localhost:0")
    assert _run_pass(recipe, model, e2, tmp_path).returncode == 0
    argv = json.loads(log.read_text().splitlines()[1])["argv"]
    assert argv[argv.index("--include") + 1] == "localhost:0"
    assert argv[-2:] == ["--seed", "5"]
    if args.command != "label":
        assert argv[argv.index("--max-steps") + 1] == "7" and "--epochs" not in argv


def test_common_sh_writes_the_node_environment(tmp_path):
    """common.sh writes the variables named by DS_ENV_FORWARD (+ ~/.deepspeed_env and the caller's
    ./.deepspeed_env lines) to a temp file, points DS_ENV_FILE at it, and removes it at exit."""
    home, caller = tmp_path / "home", tmp_path / "caller"
    home.mkdir()
    caller.mkdir()
    (home / ".deepspeed_env").write_text("FROM_HOME=1\n\n# a comment\nSHARED=home\n")
    (caller / ".deepspeed_env").write_text("FROM_CWD=2\nSHARED=cwd\n")
    script = (f"HOSTFILE={shlex.quote(str(ROOT / 'hostfiles' / 'localhost'))}; "
              f"source {shlex.quote(str(ROOT / 'recipes' / 'common.sh'))} llama3-8b; cat \"$DS_ENV_FILE\"; "
              'echo "FILE=$DS_ENV_FILE"; echo "PWD=$PWD"; echo "LAUNCH=${LAUNCH_ARGS[*]}"; echo "STEPS=${STEPS[*]}"')
    e = {"PATH": env()["PATH"], "HOME": str(home), "TMPDIR": str(tmp_path), "HF_HOME": "/data/hf",
         "HF_DATASETS_CACHE": "/data/ds", "TRANSFORMERS_VERBOSITY": "info", "WANDB_PROJECT": "rft",
         "UNRELATED": "no", "HF_BAD": "a$b", "MASTER_PORT": "29999", "MASTER_ADDR": "10.0.0.1",
         "LAUNCH_EXTRA": "--exclude node-02", "EPOCHS": "2"}
    r = subprocess.run(["bash", "-c", script], cwd=caller, env=e, capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    out = dict(ln.split("=", 1) for ln in r.stdout.splitlines() if "=" in ln)
    lines = [ln for ln in r.stdout.splitlines() if "=" in ln and not ln.startswith(("FILE=", "PWD=", "LAUNCH=", "STEPS="))]
    assert "FROM_HOME=1" in lines and "FROM_CWD=2" in lines
    assert lines.index("SHARED=home") < lines.index("SHARED=cwd")  # the launcher keeps the last
    for kv in ("HF_HOME=/data/hf", "HF_DATASETS_CACHE=/data/ds", "TRANSFORMERS_VERBOSITY=info", "WANDB_PROJECT=rft"):
        assert kv in lines
    assert any(ln.startswith("PATH=") for ln in lines)
    assert not any(ln.startswith(("UNRELATED=", "HF_BAD=")) for ln in lines)
    assert "not forwarding HF_BAD" in r.stderr
    assert out["PWD"] == str(ROOT)
    assert out["LAUNCH"] == "--master_port 29999 --master_addr 10.0.0.1 --exclude node-02"
    assert out["STEPS"] == "--epochs 2"
    assert not Path(out["FILE"]).exists(), "the env file is removed when the recipe exits"


def test_a_new_model_is_one_env_file(tmp_path):
    """Adding a model is writing one .env file: a pass takes its path (or RECIPE_MODEL names it), its
    variables reach the rft-ds command, and a missing or unknown model is a clear error, exit 2."""
    from rft_ds.cli import build_parser

    bindir, log = _fake_deepspeed(tmp_path)
    e = env({"PATH": f"{bindir}{os.pathsep}{env()['PATH']}", "FAKE_DS_LOG": str(log)})
    for k in ("HOSTFILE", "LAUNCH_EXTRA", "MASTER_ADDR", "EXTRA_ARGS", "MAX_STEPS", "EPOCHS", "DS_CONFIG", "MODEL",
              "OUT", "RECIPE_MODEL"):
        e.pop(k, None)
    mine = tmp_path / "mistral-7b.env"
    mine.write_text((ROOT / "recipes" / "models" / "llama3-8b.env").read_text()
                    .replace("/shared/models/Meta-Llama-3-8B-Instruct", "/shared/models/Mistral-7B")
                    .replace("outputs/llama3-8b", "outputs/mistral-7b").replace('LR:=2e-5', 'LR:=3e-5'))
    assert _run_pass("3_rft.sh", str(mine), e, tmp_path).returncode == 0
    assert subprocess.run(["bash", str(ROOT / "recipes" / "2_label.sh")], env=dict(e, RECIPE_MODEL=str(mine)),
                          cwd=tmp_path, capture_output=True, timeout=60, stdin=subprocess.DEVNULL).returncode == 0
    rft, lab = (build_parser().parse_args(c["argv"][c["argv"].index("rft_ds") + 1:])
                for c in map(json.loads, log.read_text().splitlines()))
    assert rft.model == lab.base == "/shared/models/Mistral-7B" and rft.lr == 3e-5
    assert rft.output == "outputs/mistral-7b/rft" and lab.output == "outputs/mistral-7b/masks.jsonl"
    r = subprocess.run(["bash", str(ROOT / "recipes" / "3_rft.sh")], env=e, cwd=tmp_path, capture_output=True,
                       text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and "usage: bash" in r.stderr and "llama3-8b" in r.stderr
    r = _run_pass("1_shad.sh", "llama4-800b", e, tmp_path)
    assert r.returncode == 2 and "recipes/models/llama4-800b.env not found" in r.stderr
    assert len(log.read_text().splitlines()) == 2, "no launch after an error"


def test_slurm_hostfile_helper(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "scontrol").write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && [ "$3" = "gpu-[01-02]" ] '
                                     '&& printf "gpu-01\\ngpu-02\\n"\n')
    (bindir / "scontrol").chmod(0o755)
    e = {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-[01-02]",
         "SLURM_GPUS_ON_NODE": "4"}
    out = tmp_path / "h" / "hostfile"
    subprocess.run(["bash", str(ROOT / "recipes/slurm/hostfile_from_slurm.sh"), str(out)], env=e, check=True,
                   timeout=30)
    assert out.read_text() == "gpu-01 slots=4\ngpu-02 slots=4\n"
    subprocess.run(["bash", str(ROOT / "recipes/slurm/hostfile_from_slurm.sh"), str(out), "8"], env=e, check=True,
                   timeout=30)
    assert out.read_text() == "gpu-01 slots=8\ngpu-02 slots=8\n"
    r = subprocess.run(["bash", str(ROOT / "recipes/slurm/hostfile_from_slurm.sh"), str(out)],
                       env={"PATH": e["PATH"]}, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "SLURM_JOB_NODELIST" in r.stderr
    subprocess.run(["bash", "-n", str(ROOT / "recipes/slurm/launch.sbatch")], check=True)


# ---------------------------------------------------------------------------------------------
# The tiny recipes for real: 2 CPU ranks, ZeRO-3 over gloo, through hostfiles/localhost.

def run_recipe(name: str, extra: dict, timeout: int = 900) -> float:
    t0 = time.time()
    e = env({"MASTER_PORT": str(free_port()), **extra})
    for k in ("HOSTFILE", "LAUNCH_EXTRA", "MASTER_ADDR", "EXTRA_ARGS", "DS_CONFIG"):
        if k not in extra:
            e.pop(k, None)
    r = subprocess.run(["bash", str(ROOT / "recipes" / name), "tiny"], env=e, cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise AssertionError(f"recipes/{name} tiny failed (rc {r.returncode}):\n{(r.stdout + r.stderr)[-6000:]}")
    dt = time.time() - t0
    print(f"recipes/{name} tiny: {dt:.1f}s")
    return dt


@pytest.fixture(scope="module")
def tiny_recipe_env(tmp_path_factory, tiny_dir):
    d = tmp_path_factory.mktemp("recipes")
    data = head_lines(ROOT / "data" / "demo" / "train.jsonl", d / "train.jsonl", 24)
    return {"OUT": str(d / "run"), "MODEL": str(tiny_dir), "DATA": str(data), "MAX_STEPS": "2",
            "MICRO_BATCH": "2", "SHUFFLE_FRACTION": "0.25", "MAX_SEQ_LEN": "1024", "LABEL_BATCH": "4"}


@pytest.fixture(scope="module")
def tiny_masks(tiny_recipe_env):
    run_recipe("1_shad.sh", tiny_recipe_env)
    run_recipe("2_label.sh", tiny_recipe_env)
    return Path(tiny_recipe_env["OUT"])


@pytest.fixture(scope="module")
def tiny_sft(tiny_masks, tiny_recipe_env):
    run_recipe("sft_baseline.sh", tiny_recipe_env)
    return metrics(tiny_masks / "sft")


@pytest.mark.launch
def test_tiny_shad_and_label(tiny_masks, tiny_recipe_env):
    from transformers import AutoModelForCausalLM

    out = tiny_masks
    rows = metrics(out / "shad")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["samples"] == 2 * 2 for r in rows)  # 2 ranks x micro-batch 2
    assert (out / "shad" / "shuffle.jsonl").stat().st_size > 0
    AutoModelForCausalLM.from_pretrained(out / "shad" / "final")
    recs = [json.loads(x) for x in (out / "masks.jsonl").read_text().splitlines()]
    assert len(recs) == 24 and len({r["id"] for r in recs}) == 24
    labels = [lab for r in recs for t in r["turns"] for lab in t["labels"]]
    assert set(labels) == {0, 1}
    assert not Path(str(out / "masks.jsonl") + ".work").exists()


@pytest.mark.launch
def test_tiny_rft_and_sft_baseline(tiny_masks, tiny_sft, tiny_recipe_env):
    from transformers import AutoModelForCausalLM

    run_recipe("3_rft.sh", tiny_recipe_env)
    rft = metrics(tiny_masks / "rft")
    sft = tiny_sft
    assert [r["step"] for r in rft] == [1, 2] and [r["step"] for r in sft] == [1, 2]
    # the same global batch: same token and class counts; before any update the same SFT loss
    for k in ("tokens", "samples", "tokens_b", "tokens_r"):
        assert rft[0][k] == sft[0][k], k
    assert rel(rft[0]["sft_loss"], sft[0]["loss"]) < 1e-5
    assert rft[0]["tokens_b"] > 0 and rft[0]["tokens_r"] > 0
    assert 0 < rft[0]["w_b"] < 1 and abs(rft[0]["w_b"] + rft[0]["w_r"] - 1) < 1e-6
    run = json.loads((tiny_masks / "rft" / "run.json").read_text())
    assert run["world_size"] == 2 and run["config"]["loss"] == "rft"
    AutoModelForCausalLM.from_pretrained(tiny_masks / "rft" / "final")
    AutoModelForCausalLM.from_pretrained(tiny_masks / "sft" / "final")


@pytest.mark.launch
def test_offload_config_runs_on_cpu(tiny_masks, tiny_sft, tiny_recipe_env):
    """ds_configs/zero3_offload.json (optimizer + params offloaded, DeepSpeedCPUAdam) takes 2 steps on
    CPU; its first step sees the same weights and batch as the plain ZeRO-3 baseline. The first run
    in a fresh venv JIT-builds cpu_adam (~2 min here), cached in TORCH_EXTENSIONS_DIR."""
    from transformers import AutoModelForCausalLM

    out = Path(tiny_recipe_env["OUT"]) / "offload"
    dt = run_recipe("sft_baseline.sh", {**tiny_recipe_env, "OUT": str(out), "MASKS": str(tiny_masks / "masks.jsonl"),
                                        "DS_CONFIG": str(ROOT / "ds_configs" / "zero3_offload.json")})
    rows = metrics(out / "sft")
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["tokens"] == tiny_sft[0]["tokens"]
    assert rel(rows[0]["loss"], tiny_sft[0]["loss"]) < 1e-5
    assert rel(rows[0]["grad_norm"], tiny_sft[0]["grad_norm"]) < 1e-4
    assert rows[1]["loss"] == rows[1]["loss"]  # finite
    run = json.loads((out / "sft" / "run.json").read_text())
    zero = run["ds_config"]["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    AutoModelForCausalLM.from_pretrained(out / "sft" / "final")
    print(f"zero3_offload: 2 steps in {dt:.1f}s (includes any cpu_adam JIT build)")


def test_nvme_offload_config_is_valid():
    """ds_configs/zero3_offload_nvme.json is documented, not run: its ZeRO and aio sections pass
    DeepSpeed's own validation, rft-ds fills its "auto" values, and the parameter swap buffer holds
    the largest parameter of the shipped 70B-class models (lm_head / embed_tokens)."""
    from deepspeed.runtime.swap_tensor.aio_config import get_aio_config
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    from rft_ds.config import TrainConfig
    from rft_ds.ds_config import load_ds_config, resolve_ds_config

    path = ROOT / "ds_configs" / "zero3_offload_nvme.json"
    raw = load_ds_config(str(path))
    cfg = TrainConfig(model="m", data="d", output="o", max_steps=1, micro_batch_size=1, grad_accum=4)
    ds = resolve_ds_config(raw, cfg, world=16, on_gpu=True, src=str(path))
    assert ds["train_batch_size"] == 64 and ds["bf16"]["enabled"] is True
    zero = DeepSpeedZeroConfig(**ds["zero_optimization"])
    assert zero.stage == 3 and zero.offload_param.device == "nvme" and zero.offload_optimizer.device == "nvme"
    assert zero.gather_16bit_weights_on_model_save
    assert set(raw["aio"]) <= set(get_aio_config(ds)), "aio keys this DeepSpeed knows"
    for name in ("llama3-70b", "qwen2.5-72b"):
        facts = json.loads((ROOT / "rft_ds" / "tools" / "model_facts" / f"{name}.json").read_text())
        assert zero.offload_param.buffer_size >= facts["vocab_size"] * facts["hidden_size"], name
