"""The tokenize-once cache (rft_ds/data/cache.py): its rows equal the plain encoder's output for
every sample, its key changes with the data, tokenizer, chat template and max-seq-len, a failed or
killed build leaves nothing that is used, and the reader's file:line errors come out unchanged."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from rft_ds.data import cache
from rft_ds.data.formats import read_conversations
from rft_ds.data.render import encode_conversation
from rft_ds.errors import DataError

from launchutil import ROOT, env


def _fields(e) -> tuple:
    return (e.id, e.input_ids, e.msg_index, e.n_messages, e.assistant_messages, e.truncated)


@pytest.mark.parametrize("max_seq_len", [None, 96])
def test_rows_equal_the_plain_encoder(tiny_tok, demo_slice, tmp_path, max_seq_len):
    """Every sample, field by field, against encode_conversation on the same conversation (with
    --max-seq-len 96 most samples are truncated, so the truncated rows are checked too)."""
    table = cache.open_cache(str(demo_slice), tiny_tok, max_seq_len, str(tmp_path), log=lambda m: None)
    convs = read_conversations(demo_slice)
    assert len(table) == len(convs) == 300
    for c, e in zip(convs, table):
        ref = encode_conversation(c, tiny_tok, max_seq_len)
        assert _fields(e) == _fields(ref)
        assert e.n_loss_tokens == ref.n_loss_tokens
    assert table.lengths == [len(encode_conversation(c, tiny_tok, max_seq_len).input_ids) for c in convs]
    if max_seq_len:
        assert sum(table.column("truncated")) > 100


def test_two_processes_build_the_same_table(tiny_tok, demo_slice, tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "MIN_SAMPLES_PER_PROC", 10)
    one = cache.open_cache(str(demo_slice), tiny_tok, 512, str(tmp_path / "a"), num_proc=1, log=lambda m: None)
    two = cache.open_cache(str(demo_slice), tiny_tok, 512, str(tmp_path / "b"), num_proc=2, log=lambda m: None)
    assert [_fields(e) for e in one] == [_fields(e) for e in two]
    assert json.loads((two.path / "done.json").read_text())["num_proc"] == 2


def test_key_changes_with_every_input(tiny_tok, tiny_dir, demo_slice, tmp_path):
    from transformers import AutoTokenizer

    k = cache.cache_key(str(demo_slice), tiny_tok, 1024)
    assert k == cache.cache_key(str(demo_slice), tiny_tok, 1024)
    assert k != cache.cache_key(str(demo_slice), tiny_tok, 512)
    edited = tmp_path / "train.jsonl"
    edited.write_bytes(demo_slice.read_bytes().replace(b"weather", b"Weather", 1))
    assert k != cache.cache_key(str(edited), tiny_tok, 1024)
    tok2 = AutoTokenizer.from_pretrained(str(tiny_dir))
    tok2.chat_template = tok2.chat_template.replace("<|im_start|>", "<|im_start|> ")
    assert k != cache.cache_key(str(demo_slice), tok2, 1024)
    tok3 = AutoTokenizer.from_pretrained(str(tiny_dir))
    tok3.add_tokens(["<tool>"])
    assert k != cache.cache_key(str(demo_slice), tok3, 1024)


def test_a_changed_template_is_a_new_cache_with_new_rows(tiny_tok, tiny_dir, demo_slice, tmp_path):
    from transformers import AutoTokenizer

    a = cache.open_cache(str(demo_slice), tiny_tok, None, str(tmp_path), log=lambda m: None)
    tok2 = AutoTokenizer.from_pretrained(str(tiny_dir))
    tok2.chat_template = tok2.chat_template.replace("<|im_start|>", "<|im_start|>\n")
    b = cache.open_cache(str(demo_slice), tok2, None, str(tmp_path), log=lambda m: None)
    assert a.path != b.path and sorted(p.name for p in tmp_path.iterdir()) == sorted([a.path.name, b.path.name])
    c = read_conversations(demo_slice)[0]
    assert b[0].input_ids == encode_conversation(c, tok2, None).input_ids != a[0].input_ids


def test_bad_data_raises_the_readers_error_and_leaves_no_cache(tiny_tok, demo_slice, tmp_path):
    bad = tmp_path / "bad.jsonl"
    lines = demo_slice.read_text().splitlines(keepends=True)[:20]
    lines[13] = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}) + "\n"
    bad.write_text("".join(lines))
    with pytest.raises(DataError) as plain:
        read_conversations(bad)
    with pytest.raises(DataError) as cached:
        cache.open_cache(str(bad), tiny_tok, None, str(tmp_path / "c"), log=lambda m: None)
    assert str(cached.value) == str(plain.value) and f"{bad}:14: field 'messages[1].role'" in str(cached.value)
    assert list((tmp_path / "c").iterdir()) == []


def test_overflow_error_names_file_and_line(tiny_tok, demo_slice, tmp_path):
    table = cache.open_cache(str(demo_slice), tiny_tok, 64, str(tmp_path), log=lambda m: None)
    first = next(c for c in read_conversations(demo_slice) if encode_conversation(c, tiny_tok, 64).truncated)
    with pytest.raises(DataError, match=rf"{demo_slice}:{first.line}: field 'messages': sample '{first.id}' is longer"):
        cache.check_overflow(table, str(demo_slice), 64)


def test_a_killed_build_is_never_used(tiny_dir, demo_slice, tmp_path):
    """SIGKILL after the table is complete in its temp dir but before the rename: the key's
    directory does not exist, and the next open builds it afresh and gives the right rows."""
    code = ("import sys; from transformers import AutoTokenizer; from rft_ds.data import cache; "
            f"cache.open_cache({str(demo_slice)!r}, AutoTokenizer.from_pretrained({str(tiny_dir)!r}), None, "
            f"{str(tmp_path)!r})")
    r = subprocess.run([sys.executable, "-c", code], env=env({"RFT_DS_FAULT": "preprocess-built:1"}), cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    left = list(tmp_path.iterdir())
    assert len(left) == 1 and ".tmp-" in left[0].name and (left[0] / "done.json").exists()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    target = tmp_path / cache.cache_key(str(demo_slice), tok, None)
    assert not cache.is_complete(target)
    table = cache.open_cache(str(demo_slice), tok, None, str(tmp_path), log=lambda m: None)
    assert table.path == target and cache.is_complete(target)
    c = read_conversations(demo_slice)[7]
    assert _fields(table[7]) == _fields(encode_conversation(c, tok, None))


def test_select_and_classes(tiny_tok, demo_slice, tmp_path):
    table = cache.open_cache(str(demo_slice), tiny_tok, None, str(tmp_path), log=lambda m: None)
    sub = table.select([5, 2])
    assert [e.id for e in sub] == [table[5].id, table[2].id] and sub.lengths == [table.lengths[5], table.lengths[2]]
    cls = [-1 if m < 0 else 1 for m in sub[0].msg_index]
    sub.set_classes(0, cls)
    assert sub[0].classes == cls and sub[1].classes is None and table[5].classes is None


def test_loss_runs_round_trip():
    for idx in ([], [-1, -1], [-1, 2, 2, -1, 2, 4, 4, -1], [0, 0, 1, 1, 1], [3]):
        assert cache._msg_index(len(idx), cache.loss_runs(idx)) == idx
