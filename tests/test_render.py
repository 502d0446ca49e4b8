"""Chat-template rendering and the per-token assistant mask, with the tiny tokenizer (checked by decoding)."""

from __future__ import annotations

import copy

import pytest

from rft_ds.data.formats import Conversation, read_conversations
from rft_ds.data.render import encode_conversation, encode_dataset, tokenizer_fingerprint
from rft_ds.errors import DataError

END = "<|im_end|>"


@pytest.fixture(scope="module")
def convs(demo_slice):
    return read_conversations(demo_slice)[:60]


def conv(msgs, cid="c", train=None):
    return Conversation(id=cid, messages=msgs, path="mem.jsonl", line=3, train_messages=train)


def dec(tok, ids):
    return tok.decode(ids, skip_special_tokens=False)


def test_assistant_tokens_decode_to_content_plus_end_of_turn(tiny_tok, convs):
    for c in convs:
        e = encode_conversation(c, tiny_tok)
        asst = [i for i, m in enumerate(c.messages) if m["role"] == "assistant"]
        assert e.assistant_messages == asst
        assert set(e.msg_index) == {-1, *asst}
        for i in asst:
            pos = [t for t, m in enumerate(e.msg_index) if m == i]
            assert pos == list(range(pos[0], pos[-1] + 1))  # contiguous
            assert dec(tiny_tok, [e.input_ids[t] for t in pos]) == c.messages[i]["content"] + END
            assert e.turn_tokens(i) == [e.input_ids[t] for t in pos]  # never at t = 0 here
        # every other token (template, system, user, tool) is unmarked: the rendering minus the spans
        text = tiny_tok.apply_chat_template(c.messages, tokenize=False)
        rest = text
        for i in asst:
            rest = rest.replace(c.messages[i]["content"] + END, "", 1)
        assert dec(tiny_tok, [x for x, m in zip(e.input_ids, e.msg_index) if m == -1]) == rest
        assert e.n_loss_tokens == sum(len(e.turn_tokens(i)) for i in asst) > 0
        assert not e.truncated and e.n_messages == len(c.messages)


def test_token_ids_equal_apply_chat_template(tiny_tok, convs):
    for c in convs[:20]:
        e = encode_conversation(c, tiny_tok)
        ref = tiny_tok.apply_chat_template(c.messages, tokenize=True)
        ref = ref["input_ids"] if hasattr(ref, "keys") else ref
        assert e.input_ids == list(ref)
        assert dec(tiny_tok, e.input_ids) == tiny_tok.apply_chat_template(c.messages, tokenize=False)


def test_train_messages_restricts_the_mask(tiny_tok):
    msgs = [{"role": "user", "content": "get weather Paris"}, {"role": "assistant", "content": "Thought: one"},
            {"role": "tool", "content": "{\"t\": 3}"}, {"role": "assistant", "content": "Final Answer: 3"}]
    e = encode_conversation(conv(msgs, train=(3,)), tiny_tok)
    assert e.assistant_messages == [3] and set(e.msg_index) == {-1, 3}
    assert dec(tiny_tok, e.turn_tokens(3)) == "Final Answer: 3" + END
    assert e.turn_tokens(1) == []


def test_trained_first_message_is_rejected(tiny_tok):
    msgs = [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "hi"}]
    with pytest.raises(DataError, match="mem.jsonl:3"):
        encode_conversation(conv(msgs), tiny_tok)


def test_truncation_counted_and_empty_samples_dropped(tiny_tok, convs):
    full = [encode_conversation(c, tiny_tok) for c in convs]
    first = [min(t for t, m in enumerate(e.msg_index) if m >= 0 and t >= 1) for e in full]
    L = sorted(first)[len(first) // 2] + 1  # about half keep at least one loss token
    encs, st = encode_dataset(convs, tiny_tok, L)
    exp_trunc = sum(len(e.input_ids) > L for e in full)
    exp_drop = sum(f >= L for f in first)
    assert 0 < exp_drop < len(convs)
    assert st.truncated == exp_trunc and st.dropped_no_loss_tokens == exp_drop
    assert st.samples == len(encs) == len(convs) - exp_drop
    kept = {c.id for c, f in zip(convs, first) if f < L}
    assert {e.id for e in encs} == kept
    assert all(len(e.input_ids) <= L and e.n_loss_tokens >= 1 for e in encs)
    assert st.tokens == sum(len(e.input_ids) for e in encs)
    assert st.loss_tokens == sum(e.n_loss_tokens for e in encs)
    by_id = {e.id: e for e in full}
    for e in encs:  # truncation keeps a prefix, marks included
        f = by_id[e.id]
        assert e.input_ids == f.input_ids[:L] and e.msg_index == f.msg_index[:L]
        assert e.truncated == (len(f.input_ids) > L)
        for m in e.assistant_messages:
            assert e.turn_tokens(m) == [x for t, (x, k) in enumerate(zip(f.input_ids, f.msg_index))
                                        if k == m and 1 <= t < L]
    assert f"{exp_drop} dropped" in st.summary()


def test_truncation_inside_a_turn_by_hand(tiny_tok):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Thought: I need the weather."}]
    full = encode_conversation(conv(msgs), tiny_tok)
    start = full.msg_index.index(1)
    e = encode_conversation(conv(msgs), tiny_tok, max_seq_len=start + 2)
    assert e.truncated and len(e.input_ids) == start + 2
    assert e.turn_tokens(1) == full.input_ids[start:start + 2] and e.n_loss_tokens == 2
    assert not encode_conversation(conv(msgs), tiny_tok, max_seq_len=len(full.input_ids)).truncated


def test_everything_dropped_is_an_error(tiny_tok, convs):
    with pytest.raises(DataError, match="no sample has an assistant token left"):
        encode_dataset(convs[:3], tiny_tok, 2)


def test_on_overflow_error_names_the_sample(tiny_tok, convs):
    long = max(convs[:10], key=lambda c: len(encode_conversation(c, tiny_tok).input_ids))
    with pytest.raises(DataError) as ei:
        encode_dataset([long], tiny_tok, 20, on_overflow="error")
    assert repr(long.id) in str(ei.value) and f"{long.path}:{long.line}" in str(ei.value)
    assert "--max-seq-len" in str(ei.value)
    encs, st = encode_dataset([long], tiny_tok, 10**6, on_overflow="error")  # fits: no error
    assert st.truncated == 0 and len(encs) == 1


def test_fingerprint_stable_across_save_and_reload(tiny_tok, tiny_dir, tmp_path):
    from transformers import AutoTokenizer

    fp = tokenizer_fingerprint(tiny_tok)
    assert len(fp) == 16 and fp == tokenizer_fingerprint(tiny_tok)
    assert fp == tokenizer_fingerprint(AutoTokenizer.from_pretrained(str(tiny_dir)))
    tiny_tok.save_pretrained(str(tmp_path / "again"))
    assert fp == tokenizer_fingerprint(AutoTokenizer.from_pretrained(str(tmp_path / "again")))
    # a different chat template is a different tokenizer for our purposes
    other = copy.deepcopy(tiny_tok)
    other.chat_template = tiny_tok.chat_template.replace("assistant", "model")
    assert other.chat_template != tiny_tok.chat_template
    assert tokenizer_fingerprint(other) != fp


def test_fingerprint_differs_for_a_different_vocabulary(tiny_tok, demo_slice):
    from rft_ds.tools.tiny import train_tokenizer

    convs = read_conversations(demo_slice)[:100]
    texts = [m["content"] for c in convs for m in c.messages]
    assert tokenizer_fingerprint(train_tokenizer(texts, 300)) != tokenizer_fingerprint(tiny_tok)


@pytest.mark.parametrize("contents", [
    ["Action: a", "Final Answer: b"],             # two assistant turns in a row (ShareGPT function_call, gpt)
    ["  leading spaces", "trailing\n\n"],          # whitespace at both ends stays in the turn
    ["caf\u00e9 \u2713 \U0001F600", "{\"k\": [1, 2]}"],  # non-ASCII (<unk> in the tiny vocab) and JSON
])
def test_unusual_assistant_contents(tiny_tok, contents):
    msgs = [{"role": "system", "content": "tools"}, {"role": "user", "content": "go"},
            {"role": "assistant", "content": contents[0]}, {"role": "assistant", "content": contents[1]},
            {"role": "user", "content": "thanks"}]
    e = encode_conversation(conv(msgs), tiny_tok)
    assert e.assistant_messages == [2, 3]
    text = tiny_tok.apply_chat_template(msgs, tokenize=False)
    for i in (2, 3):
        got = dec(tiny_tok, e.turn_tokens(i))
        if "\U0001F600" in msgs[i]["content"]:  # <unk> pieces: compare by character offsets
            enc = tiny_tok(text, add_special_tokens=False, return_offsets_mapping=True)
            spans = [enc["offset_mapping"][t] for t, m in enumerate(e.msg_index) if m == i]
            got = text[spans[0][0]:spans[-1][1]]
        assert got == msgs[i]["content"] + END


def test_fingerprint_of_named_chat_templates(tiny_tok, tmp_path):
    from transformers import AutoTokenizer

    other = copy.deepcopy(tiny_tok)
    other.chat_template = {"default": tiny_tok.chat_template, "tool_use": tiny_tok.chat_template + " "}
    fp = tokenizer_fingerprint(other)
    assert fp != tokenizer_fingerprint(tiny_tok)
    other.save_pretrained(str(tmp_path / "named"))
    assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(str(tmp_path / "named"))) == fp
