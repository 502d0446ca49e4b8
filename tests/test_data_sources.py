"""`--data` beyond one JSONL file (rft_ds/data/sources.py): Parquet files, directories, globs and
`datasets.load_dataset` sources, checked against independent readings of the same samples: a
Parquet file written with pyarrow from the JSONL's objects gives the JSONL's samples and cache rows;
a directory or glob gives the concatenation of its files in sorted order; errors name file, line or
row, and field; ids are unique across files; the cache key follows every file. The hub loading code
runs on a local data set directory (the hub itself cannot be reached here)."""

from __future__ import annotations

import json
import shutil

import pytest

from rft_ds.data import cache
from rft_ds.data.formats import read_conversations
from rft_ds.data.render import encode_conversation
from rft_ds.data.sources import Source, read_source, resolve
from rft_ds.errors import ConfigError, DataError

from launchutil import ROOT, ds_launch, metrics, plain

DEMO = ROOT / "data" / "demo" / "train.jsonl"
SHAREGPT = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation"}
QUIET = {"log": lambda m: None}


def demo_objs(n: int = 300) -> list[dict]:
    return [json.loads(x) for x in DEMO.read_text().splitlines()[:n]]


def mixed_objs(n: int = 120) -> list[dict]:
    """Demo samples, every 7th without an id, every 5th in ShareGPT form."""
    out = []
    for i, o in enumerate(demo_objs(n)):
        o = dict(o)
        if i % 5 == 3:
            o["conversations"] = [{"from": SHAREGPT[m["role"]], "value": m["content"]} for m in o.pop("messages")]
        if i % 7 == 2:
            del o["id"]
        out.append(o)
    return out


def write_jsonl(path, objs):
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return path


def write_parquet(path, objs):
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = list(dict.fromkeys(k for o in objs for k in o))  # every key of any row: a column (null where absent)
    pq.write_table(pa.table({k: [o.get(k) for o in objs] for k in keys}), path, row_group_size=37)  # row groups
    return path


def fields(e) -> tuple:
    return (e.id, e.input_ids, e.msg_index, e.n_messages, e.assistant_messages, e.truncated)


def conv_tuple(c) -> tuple:
    return (c.id, c.messages, c.line)


def table_columns(t, drop=("file",)) -> dict:
    return {k: t.column(k) for k in t.table.column_names if k not in drop}


# ------------------------------------------------------------------------------------------ Parquet
@pytest.mark.parametrize("max_seq_len", [None, 96])
def test_parquet_gives_the_jsonl_samples_and_cache_rows(tiny_tok, tmp_path, max_seq_len):
    objs = mixed_objs()
    jl = write_jsonl(tmp_path / "d.jsonl", objs)
    pq_ = write_parquet(tmp_path / "d.parquet", objs)
    from_jsonl, from_parquet = read_conversations(jl), read_source(str(pq_))
    assert [conv_tuple(c) for c in from_parquet] == [conv_tuple(c) for c in from_jsonl]
    assert from_parquet[2].id == "d-3" and from_parquet[0].id == objs[0]["id"]  # default id: <stem>-<row>
    assert from_parquet[3].messages[1]["role"] == "user"  # a ShareGPT row, mapped
    assert all(c.path == str(pq_) for c in from_parquet)
    a = cache.open_cache(str(jl), tiny_tok, max_seq_len, str(tmp_path / "c"), **QUIET)
    b = cache.open_cache(str(pq_), tiny_tok, max_seq_len, str(tmp_path / "c"), **QUIET)
    assert a.path != b.path
    assert table_columns(a) == table_columns(b)  # every stored column, row by row
    assert set(a.column("file")) == set(b.column("file")) == {0}
    assert [fields(e) for e in b] == [fields(encode_conversation(c, tiny_tok, max_seq_len)) for c in from_jsonl]
    if max_seq_len:
        assert sum(b.column("truncated")) > 20


def test_jsonl_rows_stay_what_the_plain_encoder_gives(tiny_tok, demo_slice, tmp_path):
    """A single JSONL through the source path: same ids, lines and encoded rows as before."""
    table = cache.open_cache(resolve(str(demo_slice)), tiny_tok, None, str(tmp_path), **QUIET)
    convs = read_conversations(demo_slice)
    assert table.column("id") == [c.id for c in convs] and table.column("line") == [c.line for c in convs]
    assert [fields(e) for e in table] == [fields(encode_conversation(c, tiny_tok, None)) for c in convs]
    done = json.loads((table.path / "done.json").read_text())
    assert done["files"] == [str(demo_slice)] and done["version"] == cache.CACHE_VERSION == 2


def _bad_parquet_cases(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = demo_objs(20)
    U, A = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}
    cases = {}

    def case(name, objs, row, field, words):
        cases[name] = (write_parquet(tmp_path / f"{name}.parquet", objs), row, field, words)

    case("bad_role", good[:13] + [{"id": "r", "messages": [U, {"role": "robot", "content": "x"}, A]}] + good[13:],
         14, "messages[1].role", "unknown role 'robot'")
    case("no_assistant", good[:4] + [{"id": "n", "messages": [U]}], 5, "messages", "no assistant turn")
    case("empty_assistant", good[:2] + [{"id": "e", "messages": [U, {"role": "assistant", "content": " "}]}],
         3, "messages[1].content", "empty assistant content")
    case("null_content", good[:6] + [{"id": "c", "messages": [U, {"role": "assistant", "content": None}]}],
         7, "messages[1].content", "must be a string, got NoneType")
    case("duplicate", good[:2] + [dict(good[0])], 3, "id", f"duplicate id {good[0]['id']!r} (first on row 1)")
    case("messages_as_text", [{"id": "t", "messages": json.dumps([U, A])}], 1, "messages",
         "must be a non-empty list, got str")
    case("no_column", [{"id": "x", "text": "hello"}], None, "messages",
         "no 'messages' (OpenAI format) or 'conversations' (ShareGPT format) column; the columns are ['id', 'text']")
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.Table.from_pylist(good[:1]).slice(0, 0), empty)
    cases["empty"] = (empty, None, None, "empty file: no samples")
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b'{"id": "not parquet"}\n')
    cases["junk"] = (junk, None, None, "not a readable Parquet file")
    return cases


def test_parquet_errors_name_file_row_and_field(tiny_tok, tmp_path):
    for name, (path, row, field, words) in _bad_parquet_cases(tmp_path).items():
        with pytest.raises(DataError) as e:
            read_source(str(path))
        where = f"{path}: row {row}:" if row else f"{path}:"
        assert str(e.value).startswith(where), (name, str(e.value))
        assert (f"field '{field}':" in str(e.value)) == bool(field) and words in str(e.value), (name, str(e.value))
        assert (e.value.path, e.value.line, e.value.field) == (str(path), row, field)
        if name in ("bad_role", "duplicate"):  # the cache builder raises the reader's error, leaves nothing
            with pytest.raises(DataError) as cached:
                cache.open_cache(str(path), tiny_tok, None, str(tmp_path / f"c-{name}"), **QUIET)
            assert str(cached.value) == str(e.value) and list((tmp_path / f"c-{name}").iterdir()) == []


# -------------------------------------------------------------------------------------- dir and glob
@pytest.fixture
def parts(tmp_path):
    """300 demo samples in three files (a Parquet and two JSONL), plus files a directory skips."""
    objs = demo_objs()
    d = tmp_path / "parts"
    d.mkdir()
    write_jsonl(d / "part-b.jsonl", objs[100:200])
    write_parquet(d / "part-a.parquet", objs[:100])
    write_jsonl(d / "part-c.jsonl", objs[200:])
    (d / "notes.txt").write_text("not data\n")
    write_jsonl(d / ".part-0.jsonl", objs[:3])  # hidden (e.g. an editor's temp file): skipped
    (d / "sub").mkdir()
    write_jsonl(d / "sub" / "part-z.jsonl", [{**objs[0], "id": "sub-0"}])  # not recursive
    return d, objs


def test_directory_and_glob_read_their_files_in_sorted_order(tiny_tok, parts, tmp_path):
    d, objs = parts
    want = [(o["id"], o["messages"]) for o in objs]  # the order of the names: a, b, c
    src = resolve(str(d))
    assert src.files == tuple(str(d / n) for n in ("part-a.parquet", "part-b.jsonl", "part-c.jsonl"))
    convs = read_source(src)
    assert [(c.id, c.messages) for c in convs] == want
    assert [(c.path, c.line) for c in convs][99:101] == [(str(d / "part-a.parquet"), 100), (str(d / "part-b.jsonl"), 1)]
    assert [(c.id, c.messages) for c in read_source(str(d / "part-*"))] == want
    assert [c.id for c in read_source(str(d / "part-[bc].jsonl"))] == [o["id"] for o in objs[100:]]
    table = cache.open_cache(str(d), tiny_tok, None, str(tmp_path / "c"), **QUIET)
    assert table.column("file") == [0] * 100 + [1] * 100 + [2] * 100
    assert table.column("line") == list(range(1, 101)) * 3
    assert [fields(e) for e in table] == [fields(encode_conversation(c, tiny_tok, None))
                                          for c in read_conversations(write_jsonl(tmp_path / "all.jsonl", objs))]


def test_overflow_names_the_file_and_line_of_a_later_file(tiny_tok, parts, tmp_path):
    """--on-overflow error with several files: the first long sample is in the second file; the cache
    and the in-memory path (--no-cache) both name that file and its line."""
    from rft_ds.runtime import CacheSpec, tokenized

    d, objs = parts
    b = d / "part-b.jsonl"
    long_line = 17
    rows = objs[100:200]
    rows[long_line - 1] = {**rows[long_line - 1], "messages": rows[long_line - 1]["messages"] +
                           [{"role": "user", "content": "again " * 400}, {"role": "assistant", "content": "ok " * 400}]}
    write_jsonl(b, rows)
    max_len = max(len(encode_conversation(c, tiny_tok, None).input_ids) for c in read_source(str(d))
                  if c.id != rows[long_line - 1]["id"])
    expect = f"{b}:{long_line}: field 'messages': sample {rows[long_line - 1]['id']!r} is longer than --max-seq-len {max_len}"
    for spec in (CacheSpec(True, str(tmp_path / "c"), 1), CacheSpec(False)):
        with pytest.raises(DataError) as e:
            tokenized(str(d), tiny_tok, max_len, "error", spec)
        assert str(e.value).startswith(expect), str(e.value)
    encs, st = tokenized(str(d), tiny_tok, max_len, "truncate", CacheSpec(True, str(tmp_path / "c"), 1))
    plain_encs, plain_st = tokenized(str(d), tiny_tok, max_len, "truncate", CacheSpec(False))
    assert st.truncated == plain_st.truncated == 1 and st.__dict__ == plain_st.__dict__
    assert [fields(e) for e in encs] == [fields(e) for e in plain_encs]


def test_errors_in_a_later_file_name_that_file(parts):
    d, objs = parts
    c = d / "part-c.jsonl"
    lines = c.read_text().splitlines(keepends=True)
    lines[40] = json.dumps({"id": "q", "messages": [{"role": "user", "content": 5}]}) + "\n"
    c.write_text("".join(lines))
    with pytest.raises(DataError, match=rf"^{c}:41: field 'messages\[0\].content': must be a string, got int"):
        read_source(str(d))


def test_duplicate_ids_across_files_name_both_places(tmp_path):
    objs = demo_objs(6)
    d = tmp_path / "dup"
    d.mkdir()
    write_jsonl(d / "a.jsonl", objs[:3])
    write_parquet(d / "b.parquet", objs[3:5] + [dict(objs[1])])
    with pytest.raises(DataError) as e:
        read_source(str(d))
    assert str(e.value) == (f"{d / 'b.parquet'}: row 3: field 'id': duplicate id {objs[1]['id']!r} (first at "
                            f"{d / 'a.jsonl'}:2) (ids must be unique across every file of --data: masks are joined by id)")
    # without ids, each file's default ids carry its stem: no clash
    write_jsonl(d / "a.jsonl", [{"messages": o["messages"]} for o in objs[:3]])
    write_parquet(d / "b.parquet", [{"messages": o["messages"]} for o in objs[3:]])
    assert [c.id for c in read_source(str(d))] == ["a-1", "a-2", "a-3", "b-1", "b-2", "b-3"]
    # JSONL duplicates across two files: the second names the first's file and line
    write_jsonl(d / "a.jsonl", objs[:3])
    (d / "b.parquet").unlink()
    write_jsonl(d / "c.jsonl", [objs[5], objs[0]])
    with pytest.raises(DataError, match=rf"^{d / 'c.jsonl'}:2: field 'id': duplicate id {objs[0]['id']!r} "
                                        rf"\(first at {d / 'a.jsonl'}:1\)"):
        read_source(str(d))


def test_cache_key_follows_every_file(tiny_tok, parts):
    d, objs = parts
    key = lambda: cache.cache_key(str(d), tiny_tok, 512)  # noqa: E731
    k0 = key()
    assert key() == k0
    c = d / "part-c.jsonl"
    text = c.read_text()
    c.write_text(text.replace("weather", "Weather", 1))  # one byte of one file
    k1 = key()
    c.write_text(text)
    assert k1 != k0 and key() == k0
    write_jsonl(d / "part-d.jsonl", [{**objs[0], "id": "extra"}])  # a file added
    k2 = key()
    (d / "part-d.jsonl").unlink()
    assert k2 not in (k0, k1) and key() == k0
    (d / "part-b.jsonl").rename(d / "part-bb.jsonl")  # renamed: same bytes, same order, other name
    k3 = key()
    (d / "part-bb.jsonl").rename(d / "part-b.jsonl")
    assert k3 not in (k0, k1, k2) and key() == k0
    (d / "part-a.parquet").unlink()  # a file removed
    assert key() not in (k0, k1, k2, k3)
    # a directory moved elsewhere keeps its key (names and bytes, not paths)
    shutil.copytree(d, d.parent / "moved", ignore=shutil.ignore_patterns("sub"))
    shutil.copy(d.parent / "moved" / "part-b.jsonl", d.parent / "moved" / "part-b.jsonl.bak")
    assert cache.cache_key(str(d.parent / "moved"), tiny_tok, 512) == key()


# --------------------------------------------------------------------------- datasets.load_dataset
@pytest.fixture
def hf_repo(tmp_path, monkeypatch):
    """A local copy of a hub data set repository: data/<split>-*.parquet, nothing at the top level.
    `datasets`' own cache goes to the test's temp dir."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    objs = mixed_objs(60)
    repo = tmp_path / "my_set"
    (repo / "data").mkdir(parents=True)
    write_parquet(repo / "data" / "train-00000-of-00001.parquet", objs[:40])
    write_parquet(repo / "data" / "test-00000-of-00001.parquet", objs[40:])
    (repo / "README.md").write_text("a local data set\n")
    return repo, objs


def test_load_dataset_source_with_split(tiny_tok, hf_repo, tmp_path):
    repo, objs = hf_repo
    train, test = resolve(str(repo)), resolve(str(repo), "test")
    assert (train.hub, train.split, test.split, train.files) == (str(repo), "train", "test", ())
    # the same samples as the JSONL of the same objects; default ids <name>-<row>
    ref = read_conversations(write_jsonl(tmp_path / "my_set.jsonl", objs[40:]))
    got = read_source(test)
    assert [(c.id, c.messages, c.line) for c in got] == [(c.id, c.messages, c.line) for c in ref]
    assert "id" not in objs[44] and got[4].id == "my_set-5" and got[0].path == f"hf:{repo}[test]"
    assert len(read_source(train)) == 40 and len(read_source(resolve(str(repo), "train[:7]"))) == 7
    # the cache: key by fingerprint and split, rows as the plain encoder's
    assert cache.cache_key(train, tiny_tok, 512) != cache.cache_key(test, tiny_tok, 512)
    assert cache.cache_key(test, tiny_tok, 512) == cache.cache_key(resolve(str(repo), "test"), tiny_tok, 512)
    table = cache.open_cache(test, tiny_tok, 512, str(tmp_path / "c"), **QUIET)
    assert [fields(e) for e in table] == [fields(encode_conversation(c, tiny_tok, 512)) for c in ref]
    assert json.loads((table.path / "done.json").read_text())["files"] == [f"hf:{repo}[test]"]


def test_load_dataset_errors(hf_repo, tmp_path, monkeypatch):
    import datasets

    repo, objs = hf_repo
    with pytest.raises(ConfigError, match=rf"--data '{repo}': a directory with no \*\.jsonl or \*\.parquet file "
                                          rf"in it, and datasets\.load_dataset\('{repo}', split='validation'\) "
                                          r"failed: ValueError: Unknown split"):
        read_source(resolve(str(repo), "validation"))
    bad = objs[40:]
    bad[4] = {"id": "b", "messages": [{"role": "user", "content": "x"}, {"role": "wizard", "content": "y"}]}
    write_parquet(repo / "data" / "test-00000-of-00001.parquet", bad)
    with pytest.raises(DataError, match=rf"^hf:{repo}\[test\]: row 5: field 'messages\[1\]\.role': unknown role 'wizard'"):
        read_source(resolve(str(repo), "test"))
    # a hub name, not reachable here (offline: the loader fails at once instead of retrying)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    src = resolve("some-org/some_set", "dev")
    assert (src.hub, src.split) == ("some-org/some_set", "dev")
    with pytest.raises(ConfigError, match=r"--data 'some-org/some_set': not an existing file, directory or glob "
                                          r"match, and datasets\.load_dataset\('some-org/some_set', split='dev'\) failed"):
        cache.cache_key(src, None, 512)


@pytest.mark.parametrize("spec, words", [
    ("missing.jsonl", "no such file or directory, no glob pattern, and not a Hugging Face data set name"),
    ("a/b/c/d", "no such file or directory"),
    ("no such set", "no such file or directory"),
    ("parts-*/x-*.jsonl", "no file matches this glob"),
])
def test_unresolvable_specs_are_config_errors(tmp_path, monkeypatch, spec, words):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        resolve(spec)
    assert str(e.value).startswith(f"--data {spec!r}: ") and words in str(e.value)


def test_data_split_flag_reaches_every_pass():
    from rft_ds.cli import build_parser
    from rft_ds.config import LabelConfig
    from rft_ds.runtime import CacheSpec
    from rft_ds.train.cli import config_from_args

    p = build_parser()
    common = ["--data", "org/set", "--data-split", "test"]
    for cmd in ("train", "shad-train"):
        a = p.parse_args([cmd, "--model", "m", "--output", "o", "--max-steps", "1", *common])
        cfg = config_from_args(a)
        assert (cfg.data, cfg.data_split, CacheSpec.of(cfg).split) == ("org/set", "test", "test")
        assert config_from_args(p.parse_args([cmd, "--model", "m", "--output", "o", "--data", "d"])).data_split == "train"
    a = p.parse_args(["label", "--base", "m", "--shad", "m", "--output", "o", *common])
    import dataclasses

    cfg = LabelConfig(**{f.name: getattr(a, f.name) for f in dataclasses.fields(LabelConfig)})
    assert (cfg.data_split, CacheSpec.of(cfg).split) == ("test", "test")
    assert p.parse_args(["preprocess", "--model", "m", *common]).data_split == "test"


def test_preprocess_cli_on_a_local_data_set_split(tiny_dir, hf_repo, tmp_path):
    """`rft-ds preprocess --data DIR --data-split test` in its own process: the test split's 20
    samples, and the progress bar of the tokenizing map (samples/s) on stderr."""
    repo, objs = hf_repo
    env = {"HF_DATASETS_CACHE": str(tmp_path / "hf-cache"), "HF_HUB_OFFLINE": "1"}
    r = plain(["preprocess", "--model", tiny_dir, "--data", repo, "--data-split", "test", "--max-seq-len", 256,
               "--cache-dir", tmp_path / "c"], extra_env=env)
    assert "preprocess: " in r.stdout and ": 20 samples, " in r.stdout, r.stdout
    assert "rft-ds preprocess (1 proc): 100%" in r.stderr and "20/20" in r.stderr and "examples/s" in r.stderr
    r = plain(["preprocess", "--model", tiny_dir, "--data", "org/not-here", "--cache-dir", tmp_path / "c"],
              check=False, extra_env=env)
    assert r.returncode == 2 and "--data 'org/not-here': not an existing file, directory or glob match" in r.stderr


def test_label_regex_on_a_directory_equals_the_concatenated_jsonl(tiny_dir, parts, tmp_path):
    from rft_ds.config import LabelConfig
    from rft_ds.label.regex import label_regex

    d, objs = parts
    one = write_jsonl(tmp_path / "all.jsonl", objs)
    outs = []
    for data in (d, one):
        out = tmp_path / f"masks-{data.name}.jsonl"
        label_regex(LabelConfig(base=str(tiny_dir), shad=None, data=str(data), output=str(out), method="regex",
                                max_seq_len=256))
        outs.append(out.read_text())
    assert outs[0] == outs[1] and outs[0].count("\n") == 300


# --------------------------------------------------------------------------------- one real launch
@pytest.mark.launch
def test_two_rank_train_from_parquet_equals_jsonl(tiny_dir, tmp_path):
    """`train --max-steps 1` on 2 ranks from a Parquet file and from the JSONL of the same samples:
    the same loss, tokens and samples; rank 0's log shows the tokenizing progress bar."""
    objs = demo_objs(32)
    runs = {}
    for name, path in (("jsonl", write_jsonl(tmp_path / "d.jsonl", objs)),
                       ("parquet", write_parquet(tmp_path / "d.parquet", objs))):
        out = tmp_path / name
        r = ds_launch(["train", "--model", tiny_dir, "--data", path, "--output", out, "--max-steps", 1,
                       "--micro-batch-size", 2, "--grad-accum", 2, "--max-seq-len", 256, "--seed", 5])
        runs[name] = metrics(out)
        assert "rft-ds preprocess (1 proc): 100%" in r.stdout + r.stderr and "examples/s" in r.stdout + r.stderr
    (a,), (b,) = runs["jsonl"], runs["parquet"]
    assert (a["loss"], a["tokens"], a["samples"], a["input_tokens"]) == (b["loss"], b["tokens"], b["samples"],
                                                                          b["input_tokens"])
    assert a["samples"] == 8 and a["loss"] > 0


def test_label_work_dir_identity(demo_slice, parts):
    """The label pass's resume manifest: a single file keeps its old 16-hex digest (unfinished work
    dirs of JSONL data stay resumable); a directory's changes with any of its files."""
    from types import SimpleNamespace

    from rft_ds.data.sources import data_identity
    from rft_ds.fsio import file_digest
    from rft_ds.label.chunks import manifest_of

    assert data_identity(str(demo_slice)) == file_digest(demo_slice)
    d, objs = parts
    cfg = SimpleNamespace(data=str(d), data_split="train", base=str(d), shad=str(d), batch_size=2, max_seq_len=8,
                          margin=0.0, rounds_per_chunk=1)
    before = manifest_of(cfg, 2, "fp", "fp32", 300)["data"]
    write_jsonl(d / "part-c.jsonl", objs[200:299])
    after = manifest_of(cfg, 2, "fp", "fp32", 299)["data"]
    assert len(before) == len(after) == 16 and before != after
