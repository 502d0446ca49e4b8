"""Reliability: bad input, crashes and dead ranks. docs/reliability.md lists every case, what the
user sees, and the test that covers it (here or in test_formats / test_config / test_convert /
test_engine / test_label / test_train_e2e, which this file does not repeat).

Cost: the bad-input catalogue runs every CLI case in ONE subprocess (`rft_ds.cli.main` called
once per case: the real argument parsing, error printing and exit status, one interpreter start);
the launch tests make 5 launches in all (two identical runs + a resume, a rank killed under the
launcher, a rank hung without one).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from launchutil import ROOT, ds_launch, env, free_port, head_lines, launch_cmd, metrics, rel, write_random_masks
from rft_ds import fsio
from rft_ds.errors import ConfigError, DataError, MasksError, RftDsError

DEMO = ROOT / "data" / "demo" / "train.jsonl"
FIX = Path(__file__).parent / "fixtures"
U = {"role": "user", "content": "hi"}
A = {"role": "assistant", "content": "ok"}


def _lines(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


# =============================================================================================
# 1. bad input at the command line: exit 2, a message naming file:line/field/id and what to do,
#    and nothing left that looks like a finished output

DRIVER = r"""
import contextlib, io, json, sys, traceback
from rft_ds.cli import main
cases = json.load(open(sys.argv[1]))
res = {}
for name, argv in cases.items():
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
        except BaseException as e:  # a traceback is a bug: recorded, the test fails on it
            traceback.print_exc(file=err)
            rc = "uncaught " + type(e).__name__
    res[name] = {"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()}
json.dump(res, open(sys.argv[2], "w"))
"""


def _catalogue(d: Path, model: Path) -> tuple[dict, dict]:
    """{case: argv} and {case: (expected message fragments, output path, kind)}."""
    good = head_lines(DEMO, d / "good.jsonl", 8)
    good_line = good.read_text().splitlines()[0]
    first_id = json.loads(good_line)["id"]
    data_cases = {
        "empty_file": ("", None, ["empty file"]),
        "malformed_json": (_lines(good_line, '{"messages": ['), 2, ["malformed JSON"]),
        "not_an_object": (_lines(good_line, "[1, 2]"), 2, ["must be a JSON object, got list"]),
        "missing_messages": (_lines(good_line, {"id": "x", "turns": []}), 2,
                             ["field 'messages'", "'messages' (OpenAI format) or 'conversations'"]),
        "unknown_role": (_lines(good_line, {"messages": [U, {"role": "wizard", "content": "x"}, A]}), 2,
                         ["field 'messages[1].role'", "unknown role 'wizard'", "expected one of"]),
        "non_string_content": (_lines(good_line, {"messages": [U, {"role": "assistant", "content": 3}]}), 2,
                               ["field 'messages[1].content'", "must be a string, got int"]),
        "no_assistant_turn": (_lines(good_line, {"messages": [U, {"role": "tool", "content": "t"}]}), 2,
                              ["field 'messages'", "no assistant turn", "drop the sample or add"]),
        "empty_assistant": (_lines(good_line, {"messages": [U, {"role": "assistant", "content": " "}]}), 2,
                            ["field 'messages[1].content'", "empty assistant content"]),
        "duplicate_ids": (_lines({"id": "a", "messages": [U, A]}, {"id": "a", "messages": [U, A]}), 2,
                          ["field 'id'", "duplicate id 'a' (first on line 1)", "masks are joined by id"]),
    }
    cases, expect = {}, {}

    def train(name, data, *extra, frags=(), model_dir=model):
        out = d / "runs" / name
        cases[name] = ["train", "--model", str(model_dir), "--data", str(data), "--output", str(out),
                       "--max-steps", "1", *map(str, extra)]
        expect[name] = (list(frags), out, "train")

    for name, (text, line, frags) in data_cases.items():
        p = d / f"{name}.jsonl"
        p.write_text(text)
        where = f"{p}:{line}:" if line else f"{p}:"
        train(name, p, frags=[where, *frags])
        # the labeling pass reads data with the same reader: same message, no masks, no work dir
        if name in ("malformed_json", "unknown_role"):
            out = d / "labels" / f"{name}.jsonl"
            cases["label_" + name] = ["label", "--base", str(model), "--shad", str(model), "--data", str(p),
                                      "--output", str(out)]
            expect["label_" + name] = ([where, *frags], out, "label")

    # a sample longer than --max-seq-len under --on-overflow error (truncation is counted: see
    # test_identical_runs_give_identical_metrics, which truncates)
    frags = [f"{good}:1: field 'messages'", f"sample {first_id!r} is longer than --max-seq-len 64",
             "--on-overflow truncate"]
    train("overflow_error", good, "--max-seq-len", 64, "--on-overflow", "error", frags=frags)
    out = d / "labels" / "overflow.jsonl"
    cases["label_overflow_error"] = ["label", "--base", str(model), "--shad", str(model), "--data", str(good),
                                     "--output", str(out), "--max-seq-len", "64", "--on-overflow", "error"]
    expect["label_overflow_error"] = (frags[:2], out, "label")

    # masks files (another tokenizer, missing ids and a different tokenization are in test_engine)
    masks = d / "masks.jsonl"
    write_random_masks(good, model, masks, seed=3)
    recs = [json.loads(x) for x in masks.read_text().splitlines()]

    def bad_masks(name, mutate, frags):
        r = json.loads(json.dumps(recs))
        mutate(r[1]["turns"][0])
        p = d / f"{name}.jsonl"
        p.write_text(_lines(*r))
        train(name, good, "--loss", "rft", "--masks", p, frags=[f"{p}:2:", *frags])

    bad_masks("masks_label_2", lambda t: t["labels"].__setitem__(0, 2),
              ["field 'turns[0].labels'", "labels must be 0 or 1, found ['2']"])
    bad_masks("masks_label_float", lambda t: t["labels"].__setitem__(0, 1.0), ["labels must be 0 or 1", "1.0"])
    bad_masks("masks_lengths_disagree", lambda t: t["labels"].pop(),
              ["field 'turns[0]'", "lengths disagree"])
    r = json.loads(json.dumps(recs))
    r[1]["turns"][0]["token_ids"][0] += 1  # same length, other ids: the tokenization differs
    p = d / "masks_ids_differ.jsonl"
    p.write_text(_lines(*r))
    train("masks_ids_differ", good, "--loss", "rft", "--masks", p,
          frags=[f"{p}: sample {recs[1]['id']!r} message", "differ", "another tokenizer, chat template or --max-seq-len"])

    # a model pair with different tokenizers (another chat template): refused before any model loads
    other = d / "model-other-template"
    shutil.copytree(model, other)
    (other / "chat_template.jinja").write_text((Path(model) / "chat_template.jinja").read_text() + "{# other #}")
    out = d / "labels" / "shad_tokenizer.jsonl"
    cases["label_shad_tokenizer_differs"] = ["label", "--base", str(model), "--shad", str(other), "--data", str(good),
                                             "--output", str(out)]
    expect["label_shad_tokenizer_differs"] = ([f"--shad {other}: its tokenizer", f"differs from the base model's ({model}",
                                               "SHAD must tune a copy of the same base model"], out, "label")
    train("rho1_reference_tokenizer_differs", good, "--loss", "rho1", "--reference", other,
          frags=[f"--reference {other}: its tokenizer", "the excess loss compares the same tokens"])

    # model directory without a tokenizer; no model directory at all
    notok = d / "model-no-tokenizer"
    notok.mkdir()
    for f in Path(model).iterdir():
        if not f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, notok / f.name)
    train("model_without_tokenizer", good, frags=[f"{notok}: no usable tokenizer", "tokenizer.save_pretrained"],
          model_dir=notok)
    train("model_missing", good, frags=[f"{d / 'nope'}: model directory not found"], model_dir=d / "nope")

    # DeepSpeed JSON against the command line
    def ds(name, cfg, *flags, frags):
        p = d / f"{name}.json"
        p.write_text(json.dumps(cfg))
        train(name, good, "--deepspeed", p, *flags, frags=[str(p), *frags])

    ds("ds_micro_batch", {"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 3}},
       "--micro-batch-size", 2, frags=["train_micro_batch_size_per_gpu = 4 contradicts --micro-batch-size 2",
                                       'set it to "auto" or drop the flag'])
    ds("ds_batch_arithmetic", {"train_batch_size": 7, "zero_optimization": {"stage": 3}},
       frags=["train_batch_size = 7 but micro-batch 1 x accumulation 1 x 1 ranks = 1"])
    ds("ds_precision", {"bf16": {"enabled": True}, "zero_optimization": {"stage": 3}}, "--precision", "fp32",
       frags=["bf16.enabled = True contradicts --precision fp32"])

    # an output directory that holds a run
    done = d / "runs" / "finished_run"
    (done / "final").mkdir(parents=True)
    (done / "final" / "model.safetensors").write_text("weights")
    (done / "metrics.jsonl").write_text('{"step": 1}\n')
    cases["finished_run"] = ["train", "--model", str(model), "--data", str(good), "--output", str(done),
                             "--max-steps", "1"]
    expect["finished_run"] = ([f"{done} already holds a run", "--resume", "--overwrite"], done, "finished")
    # ... which --overwrite replaces (last: the one case that loads the model and trains a step)
    again = d / "runs" / "overwrite"
    shutil.copytree(done, again)
    cases["overwrite"] = ["train", "--model", str(model), "--data", str(good), "--output", str(again),
                          "--max-steps", "1", "--overwrite"]
    expect["overwrite"] = ([], again, "overwrite")
    return cases, expect


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory, tiny_dir):
    d = tmp_path_factory.mktemp("badinput")
    cases, expect = _catalogue(d, tiny_dir)
    assert sorted(cases) == sorted(CASES + ["overwrite"])
    (d / "cases.json").write_text(json.dumps(cases))
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", DRIVER, str(d / "cases.json"), str(d / "results.json")], cwd=ROOT,
                       env=env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    print(f"catalogue: {len(cases)} CLI cases in {time.time() - t0:.1f}s")
    return json.loads((d / "results.json").read_text()), expect


CASES = ["empty_file", "malformed_json", "not_an_object", "missing_messages", "unknown_role", "non_string_content",
         "no_assistant_turn", "empty_assistant", "duplicate_ids", "overflow_error", "label_malformed_json",
         "label_unknown_role", "label_overflow_error", "masks_label_2", "masks_label_float", "masks_lengths_disagree",
         "masks_ids_differ", "model_without_tokenizer", "model_missing", "ds_micro_batch", "ds_batch_arithmetic",
         "ds_precision", "finished_run", "label_shad_tokenizer_differs", "rho1_reference_tokenizer_differs"]


@pytest.mark.launch
@pytest.mark.parametrize("case", CASES)
def test_bad_input_exit_2_clear_message_nothing_left(catalogue, case):
    results, expect = catalogue
    res = results[case]
    frags, out, kind = expect[case]
    assert res["rc"] == 2, res
    msg = res["stderr"]
    assert f"rft-ds {'label' if kind == 'label' else 'train'}: error: " in msg
    assert "Traceback" not in msg
    for f in frags:
        assert f in msg, (f, msg)
    if kind == "train":  # no model was loaded, nothing that looks like a run
        assert not (out / "metrics.jsonl").exists() and not (out / "final").exists()
        assert not (out / "checkpoints").exists() and not (out / "run.json").exists()
    elif kind == "label":
        assert not out.exists() and not Path(str(out) + ".work").exists()
    else:  # the finished run is untouched
        assert (out / "final" / "model.safetensors").read_text() == "weights"
        assert (out / "metrics.jsonl").read_text() == '{"step": 1}\n'


@pytest.mark.launch
def test_overwrite_replaces_a_finished_run(catalogue):
    results, expect = catalogue
    res, (_, out, _) = results["overwrite"], expect["overwrite"]
    assert res["rc"] == 0, res["stderr"][-3000:]
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert (out / "final" / "model.safetensors").read_bytes() != b"weights"


def test_collective_named_from_traceback():
    import sys as _sys

    from rft_ds.dist import failure

    ns: dict = {}
    src = "def _allgather_params_coalesced():\n    raise RuntimeError('gloo: Connection closed by peer')\n"
    exec(compile(src, "/venv/site-packages/deepspeed/runtime/zero/partition_parameters.py", "exec"), ns)
    try:
        ns["_allgather_params_coalesced"]()
    except RuntimeError:
        tb = _sys.exc_info()[2]
    assert failure._collective_in(tb) == "DeepSpeed _allgather_params_coalesced (partition_parameters.py)"


def test_reliability_doc_lists_every_case():
    doc = (ROOT / "docs" / "reliability.md").read_text()
    for case in CASES:
        assert f"[{case}]" in doc, case


# =============================================================================================
# 1b. hostfiles

from rft_ds.tools.hostfile import HostfileError, parse_hostfile  # noqa: E402


def _ds_parse(text: str):
    from deepspeed.launcher.runner import _parse_hostfile

    return list(_parse_hostfile(text.splitlines(keepends=True)).items())


@pytest.mark.parametrize("name", ["localhost", "example-2x8"])
def test_shipped_hostfiles_pass(name):
    path = ROOT / "hostfiles" / name
    hosts = parse_hostfile(path)
    assert hosts == _ds_parse(path.read_text())
    assert hosts == {"localhost": [("localhost", 2)], "example-2x8": [("node-01", 8), ("node-02", 8)]}[name]


def test_good_hostfile_forms_agree_with_deepspeed(tmp_path):
    text = ("# cluster A\n\n   \nnode-01 slots=8\n\tnode-02\tslots=4   # trailing comment\n"
            "10.0.0.3 slots=1\n[fe80::1%eth0] slots=2\ngpu_node.example.org slots=16\n")
    p = tmp_path / "hosts"
    p.write_text(text)
    want = [("node-01", 8), ("node-02", 4), ("10.0.0.3", 1), ("[fe80::1%eth0]", 2), ("gpu_node.example.org", 16)]
    assert parse_hostfile(p) == want == _ds_parse(text)


@pytest.mark.parametrize("text,line,words", [
    ("node-01 slots=8\nnode-02\n", 2, ["host 'node-02' has no slots=N", "node-01 slots=8"]),
    ("node-01 slots=eight\n", 1, ["slots must be a whole number, got 'eight'"]),
    ("node-01 slots=8x\n", 1, ["got '8x'"]),
    ("node-01 slots=-1\n", 1, ["got '-1'"]),
    ("node-01 slots=2.5\n", 1, ["got '2.5'"]),
    ("node-01 slots=0\n", 1, ["slots must be >= 1, got 0", "--exclude"]),
    ("node-01 slots = 8\n", 1, ["bad slots field 'slots'", "no spaces around '='"]),
    ("node-01 slots=\n", 1, ["got ''"]),
    ("node-01 slots=8 gpus=4\n", 1, ["unexpected 'gpus=4'"]),
    ("node-01 slots=8 slots=4\n", 1, ["unexpected 'slots=4'"]),
    ("node-01 8\n", 1, ["has no slots=N"]),
    ("slots=8\n", 1, ["bad host name 'slots=8'"]),
    ("node-01 slots=8\n# c\nnode-02 slots=8\nnode-01 slots=4\n", 4, ["duplicate host 'node-01' (first on line 1)"]),
    ("# only comments\n\n", None, ["no hosts"]),
    ("", None, ["no hosts"]),
])
def test_bad_hostfiles_name_file_and_line(tmp_path, text, line, words):
    p = tmp_path / "hosts"
    p.write_text(text)
    with pytest.raises(HostfileError) as ei:
        parse_hostfile(p)
    msg = str(ei.value)
    assert msg.startswith(f"{p}:{line}: " if line else f"{p}: "), msg
    assert isinstance(ei.value, ConfigError) and ei.value.line == line
    for w in words:
        assert w in msg, msg


def test_hostfile_missing_and_not_text(tmp_path):
    with pytest.raises(HostfileError, match="hostfile not found"):
        parse_hostfile(tmp_path / "none")
    p = tmp_path / "bin"
    p.write_bytes(b"node\xff slots=2\n")
    with pytest.raises(HostfileError, match="not UTF-8"):
        parse_hostfile(p)


@pytest.fixture
def cli_main(monkeypatch):
    from rft_ds import cli

    if "rft_ds.tools.hostfile" not in cli.COMMAND_MODULES:  # until cli.py lists it
        monkeypatch.setattr(cli, "COMMAND_MODULES", cli.COMMAND_MODULES + ["rft_ds.tools.hostfile"])
    return cli.main


def test_check_hostfile_command(tmp_path, capsys, cli_main):
    assert cli_main(["check-hostfile", str(ROOT / "hostfiles" / "example-2x8")]) == 0
    assert "2 hosts, 16 slots: node-01 (8), node-02 (8)" in capsys.readouterr().out
    assert cli_main(["check-hostfile", str(ROOT / "hostfiles" / "localhost"), "--world-size", "2"]) == 0
    assert cli_main(["check-hostfile", str(ROOT / "hostfiles" / "localhost"), "--world-size", "4"]) == 2
    assert "2 slots, but --world-size 4" in capsys.readouterr().err
    p = tmp_path / "hosts"
    p.write_text("a slots=1\nb slots=x\n")
    assert cli_main(["check-hostfile", str(p)]) == 2
    assert f"rft-ds check-hostfile: error: {p}:2: slots must be a whole number" in capsys.readouterr().err


# =============================================================================================
# 1c. disk full while writing: atomic_write leaves the target absent or as it was, no temp file

def _temps(d: Path) -> list[str]:
    return [p.name for p in d.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("old", [None, "old content\n"])
@pytest.mark.parametrize("where", ["write", "fsync", "rename"])
def test_atomic_write_failure_keeps_target(tmp_path, monkeypatch, old, where):
    target = tmp_path / "masks.jsonl"
    if old is not None:
        target.write_text(old)
    full = OSError(errno.ENOSPC, "No space left on device")

    def boom(*a, **k):
        raise full

    if where == "fsync":
        monkeypatch.setattr(fsio.os, "fsync", boom)
    if where == "rename":
        monkeypatch.setattr(fsio.os, "replace", boom)
    with pytest.raises(OSError) as ei:
        with fsio.atomic_write(target) as f:
            f.write("x" * 10000)
            if where == "write":
                raise full  # what f.write raises when the disk fills mid-file
            f.write("tail\n")
    assert ei.value.errno == errno.ENOSPC
    assert (target.read_text() if target.exists() else None) == old
    assert _temps(tmp_path) == []


def test_write_json_failure_keeps_target(tmp_path, monkeypatch):
    target = tmp_path / "run.json"
    fsio.write_json(target, {"a": 1})
    monkeypatch.setattr(fsio.json, "dump", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(OSError):
        fsio.write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 1} and _temps(tmp_path) == []


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 64 KiB tmpfs (root only; skipped where mount is not allowed)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(mnt: Path, leave: int) -> None:
    st_ = os.statvfs(mnt)
    free = st_.f_bavail * st_.f_frsize
    with open(mnt / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def test_disk_full_on_a_real_tmpfs(tiny_tmpfs):
    target = tiny_tmpfs / "masks.jsonl"
    target.write_text("old\n")
    _fill(tiny_tmpfs, 8192)
    with pytest.raises(OSError) as ei:
        with fsio.atomic_write(target) as f:
            for _ in range(100):
                f.write(fsio.dumps_line({"id": "x" * 1000}))
    assert ei.value.errno == errno.ENOSPC
    assert target.read_text() == "old\n" and _temps(tiny_tmpfs) == []


def test_convert_cli_on_a_full_disk_leaves_nothing(tiny_tmpfs):
    """The command fails (today: OSError traceback, exit 1) and leaves neither output nor temp file."""
    _fill(tiny_tmpfs, 2048)
    out = tiny_tmpfs / "apigen.jsonl"
    r = subprocess.run([sys.executable, "-m", "rft_ds", "convert", "--from", "apigen", str(FIX / "apigen_small.json"),
                        "--output", str(out)], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "No space left on device" in r.stderr
    assert not out.exists() and _temps(tiny_tmpfs) == []


# =============================================================================================
# 2. appended files: a torn last line is dropped on resume

def test_read_jsonl_tail_safe_drops_torn_line(tmp_path):
    p = tmp_path / "metrics.jsonl"
    rows = [{"step": i, "loss": 1.0 / i} for i in range(1, 4)]
    for r in rows:
        fsio.append_line(p, r)
    assert fsio.read_jsonl_tail_safe(p) == rows
    with open(p, "a") as f:
        f.write('\n{"step": 4, "lo')  # a blank line, then a crash mid-write
    assert fsio.read_jsonl_tail_safe(p) == rows
    with open(p, "a") as f:
        f.write("ss\": 0.25}")  # complete JSON but never terminated: still not a finished line
    assert fsio.read_jsonl_tail_safe(p) == rows
    assert fsio.read_jsonl_tail_safe(tmp_path / "none.jsonl") == []


# =============================================================================================
# 5. fuzzing the masks reader and the converters' readers

json_scalar = st.none() | st.booleans() | st.integers(-3, 3) | st.floats() | st.text(max_size=4)
json_value = st.recursive(json_scalar, lambda ch: st.lists(ch, max_size=3) | st.dictionaries(st.text(max_size=5), ch,
                                                                                              max_size=3), max_leaves=8)
mask_turn = st.fixed_dictionaries(
    {"message": st.integers(0, 4), "token_ids": st.lists(st.integers(0, 9), max_size=3),
     "labels": st.lists(st.sampled_from([0, 1]), max_size=3)},
    optional={"loss_diff": st.lists(st.floats(-1, 1), max_size=3)})


@st.composite
def mask_record(draw):
    rec = {"id": draw(st.text(min_size=1, max_size=3)), "tokenizer": "0123456789abcdef",
           "turns": draw(st.lists(mask_turn, max_size=3))}
    for t in rec["turns"]:  # mostly consistent lengths
        if draw(st.booleans()):
            n = len(t["token_ids"])
            t["labels"] = (t["labels"] * 3)[:n] + [0] * max(0, n - 3 * len(t["labels"]))
            if "loss_diff" in t:
                t["loss_diff"] = [0.5] * n
    if draw(st.booleans()):  # one field replaced by junk
        obj = draw(st.sampled_from([rec] + rec["turns"]))
        obj[draw(st.sampled_from(sorted(obj)))] = draw(json_value | st.sampled_from([True, 1.0, 2, [2], ["1"]]))
    return rec


def _mutate(data, text: str) -> str:
    """Cut, duplicate or corrupt a file's text the way crashes and editors do."""
    op = data.draw(st.sampled_from(["none", "cut", "dup_line", "junk", "nest"]))
    if op == "cut" and text:
        return text[: data.draw(st.integers(0, len(text)))]
    if op == "dup_line" and text:
        lines = text.splitlines(keepends=True)
        return text + lines[data.draw(st.integers(0, len(lines) - 1))]
    if op == "junk":
        i = data.draw(st.integers(0, len(text)))
        return text[:i] + data.draw(st.text(max_size=4)) + text[i:]
    if op == "nest":
        return text + "[" * 5000 + "\n"
    return text


def _write_bytes(path: str, text: str, data) -> None:
    raw = text.encode("utf-8", "surrogatepass")
    if data.draw(st.booleans()) and raw:  # sometimes a byte that is not UTF-8
        i = data.draw(st.integers(0, len(raw)))
        raw = raw[:i] + b"\xff" + raw[i:]
    with open(path, "wb") as f:
        f.write(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mask_record().map(json.dumps) | json_value.map(json.dumps), max_size=4), st.data())
def test_fuzz_read_masks_loads_or_raises_masks_error(lines, data):
    from rft_ds.masks import read_masks

    fd, path = tempfile.mkstemp(suffix=".jsonl")
    os.close(fd)
    try:
        _write_bytes(path, _mutate(data, "\n".join(lines)), data)
        try:
            got = read_masks(path)
        except MasksError as e:
            assert path in str(e)
            return
        for rec in got.values():  # what loads is valid
            for t in rec["turns"]:
                assert all(type(x) is int for x in t["token_ids"])
                assert all(type(x) is int and x in (0, 1) for x in t["labels"])
                assert len(t["labels"]) == len(t["token_ids"])
    finally:
        os.unlink(path)


conv_turn = st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt", "function_call", "observation", "system",
                                                            "user", "assistant", "function", "bot"]),
                                   "value": st.sampled_from(["hi", "x", "", " "])})
conv_record = st.fixed_dictionaries(
    {}, optional={"id": st.text(max_size=3) | json_value, "conversations": st.lists(conv_turn, max_size=4) | json_value,
                  "query": st.text(max_size=3), "tools": st.sampled_from(['[{"name": "f"}]', "[]", "nope"]) | json_value,
                  "answers": st.sampled_from(['[{"name": "f", "arguments": {}}]', "[]", "{"]) | json_value,
                  "system": st.text(max_size=3) | json_value}) | json_value


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["toolbench", "apigen", "sharegpt"]), st.booleans(), st.lists(conv_record.map(json.dumps),
                                                                                      max_size=4), st.data())
def test_fuzz_converters_convert_or_raise_data_error(source, as_array, records, data):
    from rft_ds.tools import convert as cv

    text = ("[" + ",\n".join(records) + "]") if as_array else "\n".join(records)
    d = tempfile.mkdtemp()
    try:
        src, out = os.path.join(d, "in.json"), os.path.join(d, "out.jsonl")
        _write_bytes(src, _mutate(data, text), data)
        try:
            stats = cv.convert(source, src, out, apigen_format=data.draw(st.sampled_from(["json", "react"])))
        except DataError as e:
            assert src in str(e)
            assert sorted(os.listdir(d)) == ["in.json"]  # no output, no temp file
            return
        assert stats.converted >= 1 and os.path.exists(out)
    finally:
        shutil.rmtree(d)


# =============================================================================================
# 3. dead ranks: the report (function level, no launch)

def test_comm_failure_recognised():
    from rft_ds import dist

    assert dist.looks_like_comm_failure(RuntimeError(
        "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:24763: Connection reset by peer"))
    assert dist.looks_like_comm_failure(RuntimeError(
        "[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 30000ms for recv operation"))
    assert dist.looks_like_comm_failure(RuntimeError("NCCL communicator was aborted on rank 3"))
    # gloo words a process-group timeout in more than one way; CI saw this one (no "gloo" in it)
    assert dist.looks_like_comm_failure(RuntimeError("Application timeout caused pair closure"))
    assert not dist.looks_like_comm_failure(ValueError("Connection reset"))
    assert not dist.looks_like_comm_failure(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert issubclass(dist.RankFailure, RftDsError)  # the CLI prints it as one line and exits 2


def test_peer_report_names_dead_hung_and_failed_ranks(monkeypatch):
    """Six ranks seen from rank 0 through a real TCPStore: 1 beats, 2 stopped beating, 3 exited with
    an error, 4 never started, 5 is a fellow survivor."""
    import torch.distributed as td

    from rft_ds import dist
    from rft_ds.dist import failure

    port = free_port()
    master = td.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "6"}.items():
        monkeypatch.setenv(k, v)
    hb = failure._Heartbeat(0.1)
    monkeypatch.setitem(dist._state, "hb", hb)
    monkeypatch.setitem(dist._state, "timeout_min", 0.5)
    stop = threading.Event()

    def rank1():
        n = 0
        while not stop.is_set():
            n += 1
            master.set("rft_ds/hb/1", f"{n} node-a 111")
            time.sleep(0.03)

    threading.Thread(target=rank1, daemon=True).start()
    master.set("rft_ds/hb/2", "7 node-b 222")
    master.set("rft_ds/hb/3", "5 node-b 333")
    master.set("rft_ds/exit/3", "error ValueError: boom")
    master.set("rft_ds/hb/5", "9 node-c 555")
    master.set("rft_ds/exit/5", "peer collective 'barrier' failed")
    try:
        rep = dist.peer_report(window=0.8)
        assert rep.startswith("lost: ")
        assert "rank 2 (host node-b, pid 222) sent no heartbeat during a" in rep and "killed, crashed or hung" in rep
        assert "rank 3 exited with ValueError: boom" in rep
        assert "rank 4 never sent a heartbeat" in rep
        assert "rank 1" not in rep and "rank 5" not in rep
        with pytest.raises(dist.RankFailure) as ei:
            failure._guard("all_reduce", lambda: (_ for _ in ()).throw(RuntimeError("gloo: Connection closed by peer")))
        msg = str(ei.value)
        for w in ["[rank 0/6 on", "collective 'all_reduce' failed after", "process-group timeout 0.5 min",
                  "lost: rank 2", "Backend said: RuntimeError: gloo: Connection closed by peer",
                  "Check the other ranks' logs"]:
            assert w in msg, msg
        assert master.get("rft_ds/exit/0").decode().startswith("peer ")  # rank 0 told the others it is a survivor
    finally:
        stop.set()
        hb.close()
    del master  # rank 0's store gone: the report says so instead of hanging
    assert "does not answer" in dist.peer_report(window=0.3)


def test_peer_report_without_heartbeats(monkeypatch):
    from rft_ds import dist

    monkeypatch.setitem(dist._state, "hb", None)
    assert "heartbeats are off" in dist.peer_report()


def test_stale_jit_build_lock_is_reported(tmp_path, monkeypatch, capsys):
    from rft_ds import dist

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    old, new = tmp_path / "fused_adam" / "lock", tmp_path / "cpu_adam" / "lock"
    for p in (old, new):
        p.parent.mkdir()
        p.write_text("")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert dist.warn_stale_build_locks() == [str(old)]
    assert f"stale JIT-build lock file(s) {old}" in capsys.readouterr().err


# =============================================================================================
# 3. dead ranks for real (launches)

def _wait_for_steps(out: Path, n: int, procs, limit: float) -> None:
    t0 = time.time()
    m = out / "metrics.jsonl"
    while time.time() - t0 < limit:
        if m.exists() and len(m.read_text().splitlines()) >= n:
            return
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"a process exited (rc {p.returncode}) before training got going")
        time.sleep(0.2)
    pytest.fail(f"no {n} training steps within {limit}s")


def _train_forever(model, data, out) -> list[str]:
    return ["train", "--model", str(model), "--data", str(data), "--output", str(out), "--max-steps", "100000",
            "--micro-batch-size", "1", "--max-seq-len", "384", "--dist-timeout-min", "0.5"]


@pytest.mark.launch
def test_rank_killed_under_the_launcher(tmp_path, tiny_dir):
    """SIGKILL rank 1 (not rank 0) by pid mid-training: the launcher notices, stops rank 0, exits non-zero."""
    import psutil

    data = head_lines(DEMO, tmp_path / "train.jsonl", 32)
    out = tmp_path / "run"
    log = open(tmp_path / "launch.log", "w+")
    p = subprocess.Popen(launch_cmd(_train_forever(tiny_dir, data, out), 2), cwd=ROOT,
                         env=env({"RFT_DS_HEARTBEAT_S": "0.5"}), stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)
    try:
        _wait_for_steps(out, 2, [p], 400)  # JIT builds are done: killing now leaves no stale build lock
        (r1,) = [c for c in psutil.Process(p.pid).children(recursive=True) if "--local_rank=1" in c.cmdline()]
        os.kill(r1.pid, signal.SIGKILL)
        t0 = time.time()
        rc = p.wait(timeout=120)  # a hang fails here instead of hanging CI
        took = time.time() - t0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    log.seek(0)
    text = log.read()
    print(f"launcher exited {rc} {took:.1f}s after rank 1 was killed")
    assert rc != 0
    assert took < 60
    assert "exits with return code = -9" in text  # the launcher's own line
    # rank 0 says what happened: its failed collective names rank 1, or it reports the SIGTERM
    assert "lost: rank 1" in text or "[rank 0] received SIGTERM" in text, text[-3000:]
    assert not (out / "final").exists()
    assert all(json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines())  # no torn line


@pytest.mark.launch
def test_hung_rank_detected_by_the_survivor_alone(tmp_path, tiny_dir):
    """Two ranks started by hand (one launcher per node, as with --no_ssh or SLURM: nobody cleans up
    for the survivor). Rank 1 is frozen with SIGSTOP (a hung node); rank 0 must stop by itself within
    the process-group timeout (0.5 min) and name rank 1, the collective and the timeout."""
    data = head_lines(DEMO, tmp_path / "train.jsonl", 32)
    out = tmp_path / "run"
    port = str(free_port())
    procs, logs = [], []
    for r in (0, 1):
        logs.append(open(tmp_path / f"rank{r}.log", "w+"))
        e = env({"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "LOCAL_SIZE": "2",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RFT_DS_HEARTBEAT_S": "0.5"})
        procs.append(subprocess.Popen([sys.executable, "-m", "rft_ds", *_train_forever(tiny_dir, data, out)],
                                      cwd=ROOT, env=e, stdout=logs[-1], stderr=subprocess.STDOUT,
                                      start_new_session=True))
    try:
        _wait_for_steps(out, 2, procs, 400)
        os.kill(procs[1].pid, signal.SIGSTOP)
        t0 = time.time()
        rc = procs[0].wait(timeout=150)
        took = time.time() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    logs[0].seek(0)
    text = logs[0].read()
    print(f"rank 0 exited {rc} {took:.1f}s after rank 1 froze")
    assert rc != 0
    assert took < 30 + 45  # the timeout plus the peer check and teardown; never a hang
    for w in [f"rank 1 (host ", f"pid {procs[1].pid}) sent no heartbeat", "collective '", "failed",
              "process-group timeout 0.5 min", "Check the other ranks' logs"]:
        assert w in text, (w, text[-3000:])
    assert not (out / "final").exists()


# =============================================================================================
# 4. determinism, and 2. a resumed run rewrites metrics.jsonl without its torn tail

@pytest.fixture(scope="module")
def twins(tmp_path_factory, tiny_dir):
    d = tmp_path_factory.mktemp("twins")
    data = head_lines(DEMO, d / "train.jsonl", 24)
    common = ["train", "--model", tiny_dir, "--data", data, "--micro-batch-size", 2, "--max-steps", 4,
              "--save-steps", 2, "--lr", "3e-3", "--seed", 5, "--max-seq-len", 384]
    runs = {}
    for name in ("a", "b"):
        r = ds_launch(common + ["--output", d / name], nproc=2)
        runs[name] = (d / name, r.stdout)
    return {"dir": d, "common": common, **runs}


def _strip(rows):
    # wall-clock fields differ between identical runs; everything computed must not
    clock = {"elapsed_s", "step_time_s", "tokens_per_s", "samples_per_s", "mfu", "startup_s"}
    return [{k: v for k, v in r.items() if k not in clock} for r in rows]


@pytest.mark.launch
def test_identical_runs_give_identical_metrics(twins):
    (a, out_a), (b, _) = twins["a"], twins["b"]
    ma, mb = metrics(a), metrics(b)
    assert [r["step"] for r in ma] == [1, 2, 3, 4]
    assert _strip(ma) == _strip(mb)  # bit-identical floats, not approximately equal
    assert (a / "final" / "model.safetensors").read_bytes() == (b / "final" / "model.safetensors").read_bytes()
    # --max-seq-len 384 truncates some demo samples: counted in the log and in run.json
    n = json.loads((a / "run.json").read_text())["data"]["truncated"]
    assert n > 0 and f"{n} truncated to --max-seq-len" in out_a


@pytest.mark.launch
def test_resume_rewrites_metrics_without_torn_or_extra_lines(twins):
    """A copy of run b as a crash would leave it: final/ missing, steps 1-3 logged after the step-2
    checkpoint, step 4 torn mid-line. --resume continues from step 2 and rewrites metrics.jsonl."""
    d, (a, _), (b, _) = twins["dir"], twins["a"], twins["b"]
    c = d / "c"
    shutil.copytree(b, c, ignore=shutil.ignore_patterns("final"))
    lines = (b / "metrics.jsonl").read_text().splitlines(keepends=True)
    (c / "metrics.jsonl").write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    assert (c / "checkpoints" / "latest").read_text().strip() == "step-2"
    r = ds_launch(twins["common"] + ["--output", c, "--resume"], nproc=2)
    assert "resumed from" in r.stdout and "at step 2" in r.stdout
    text = (c / "metrics.jsonl").read_text()
    assert text.endswith("\n") and len(text.splitlines()) == 4
    got, want = metrics(c), metrics(a)
    assert [m["step"] for m in got] == [1, 2, 3, 4]
    assert _strip(got[:2]) == _strip(want[:2])  # kept as they were
    for x, y in zip(got[2:], want[2:]):  # recomputed after the checkpoint
        for k in ("loss", "grad_norm"):
            assert rel(x[k], y[k]) <= 1e-6, (k, x, y)
    assert (c / "final" / "model.safetensors").exists()
