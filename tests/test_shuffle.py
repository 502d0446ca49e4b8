"""SHAD's shuffled subset: property tests (hypothesis) plus a few fixed cases."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rft_ds.data.formats import Conversation
from rft_ds.data.shuffle import all_pairs, cross_sample_derangement, shuffled_subset
from rft_ds.errors import ConfigError

FAST = settings(max_examples=150, deadline=None)


# ------------------------------------------------------------------ cross_sample_derangement

def feasible(owners: list[int]) -> bool:
    return len(owners) >= 2 and max(Counter(owners).values()) * 2 <= len(owners)


@FAST
@given(st.lists(st.integers(0, 6), min_size=0, max_size=40), st.integers(0, 2**32 - 1))
def test_derangement_property(owners, seed):
    if not feasible(owners):
        with pytest.raises(ConfigError):
            cross_sample_derangement(owners, random.Random(seed))
        return
    p = cross_sample_derangement(owners, random.Random(seed))
    assert sorted(p) == list(range(len(owners)))  # a permutation
    assert all(owners[p[j]] != owners[j] for j in range(len(owners)))  # never from its own sample
    assert p == cross_sample_derangement(owners, random.Random(seed))  # deterministic per seed


@FAST
@given(st.integers(1, 20), st.integers(0, 1000))
def test_derangement_tight_two_owners(half, seed):
    # exactly half the pairs from one sample: feasible, and every pair must cross over
    owners = [0] * half + [1] * half
    p = cross_sample_derangement(owners, random.Random(seed))
    assert all(owners[p[j]] != owners[j] for j in range(2 * half))


@pytest.mark.parametrize("owners", [[], [0], [0, 0], [3, 3, 3, 1, 2], [5, 5, 5, 5, 1, 2, 3]])
def test_derangement_infeasible_raises(owners):
    with pytest.raises(ConfigError):
        cross_sample_derangement(owners, random.Random(0))


# ------------------------------------------------------------------ shuffled_subset

def make_convs(turns_per_sample: list[int], with_tool: bool = True) -> list[Conversation]:
    """Sample s: system, user, then `t` assistant turns separated by tool/user messages.
    Every content string is unique, so a message can be traced back to where it came from."""
    convs = []
    for s, t in enumerate(turns_per_sample):
        msgs = [{"role": "system", "content": f"sys {s}"}, {"role": "user", "content": f"ask {s}"}]
        for a in range(t):
            if a:
                role = "tool" if with_tool and a % 2 else "user"
                msgs.append({"role": role, "content": f"{role} {s}.{a}"})
            msgs.append({"role": "assistant", "content": f"answer {s}.{a}"})
        convs.append(Conversation(id=f"c{s}", messages=msgs, path="x.jsonl", line=s + 1))
    return convs


def exists_feasible_subset(counts: list[int], k: int) -> bool:
    """A k-subset of pairs whose owners admit a cross-sample derangement: at most k//2 per sample."""
    return k >= 2 and sum(min(c, k // 2) for c in counts) >= k


def check_subset(convs, out, audit, k):
    by_id = {c.id: c for c in convs}
    assert len(out) == len(audit) == k
    ins, outs = [], []
    for sample, a in zip(out, audit):
        assert a["id"] == sample.id
        src, dst = by_id[a["input_id"]], by_id[a["output_id"]]
        i, io = a["input_turn"], a["output_turn"]
        assert a["input_id"] != a["output_id"]  # output from a different sample
        assert src.messages[i]["role"] == "assistant" and dst.messages[io]["role"] == "assistant"
        # input = messages[:i] of its sample, output = an intact assistant message of another one
        assert sample.messages[:-1] == src.messages[:i]
        assert sample.messages[-1] == dst.messages[io]
        assert sample.messages[-1] is not dst.messages[io]  # a copy: the source data stays untouched
        # only the last message trains
        assert sample.train_messages == (len(sample.messages) - 1,)
        assert sample.loss_message_indices() == [len(sample.messages) - 1]
        ins.append((src.id, i))
        outs.append((dst.id, io))
    # the chosen pairs: each once as an input, each once as an output (a permutation)
    assert len(set(ins)) == k and sorted(ins) == sorted(outs)
    assert len({s.id for s in out}) == k


@settings(max_examples=120, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=12), st.integers(1, 100), st.integers(0, 10**6))
def test_shuffled_subset_property(turns, percent, seed):
    convs = make_convs(turns)
    fraction = percent / 100
    P = sum(turns)
    k = max(2, -(-percent * P // 100))  # ceil(fraction * pairs) in exact integer arithmetic
    if not exists_feasible_subset(turns, min(k, P)):
        with pytest.raises(ConfigError):
            shuffled_subset(convs, fraction, seed)
        return
    out, audit = shuffled_subset(convs, fraction, seed)
    check_subset(convs, out, audit, k)
    assert shuffled_subset(convs, fraction, seed) == (out, audit)  # deterministic per seed


def test_fraction_count_is_not_inflated_by_float_rounding():
    convs = make_convs([1] * 100)
    out, _ = shuffled_subset(convs, 0.07, 0)  # 0.07 * 100 == 7.000000000000001 in floats
    assert len(out) == 7
    out, _ = shuffled_subset(convs, 0.01, 0)  # 1% of 100 -> 1, raised to the minimum of 2
    assert len(out) == 2


def test_subset_of_one_big_conversation_and_singletons_never_fails_when_possible():
    # one 10-turn conversation and two single-turn ones: any 2 pairs from different samples work,
    # but a uniform draw picks two pairs of the big one 68% of the time.
    convs = make_convs([10, 1, 1])
    for seed in range(50):
        out, audit = shuffled_subset(convs, 0.01, seed)
        check_subset(convs, out, audit, 2)


def test_all_pairs_and_train_messages():
    convs = make_convs([2, 1])
    assert all_pairs(convs) == [(0, 2), (0, 4), (1, 2)]
    convs[0].train_messages = (4,)
    assert all_pairs(convs) == [(0, 4), (1, 2)]


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_bad_fraction(fraction):
    with pytest.raises(ConfigError, match="shuffle-fraction"):
        shuffled_subset(make_convs([1, 1, 1]), fraction, 0)


def test_single_conversation_cannot_be_shuffled():
    with pytest.raises(ConfigError):
        shuffled_subset(make_convs([4]), 1.0, 0)
    with pytest.raises(ConfigError):
        shuffled_subset(make_convs([1]), 1.0, 0)


def test_different_seeds_give_different_pairings():
    convs = make_convs([1] * 30)
    results = {tuple((a["input_id"], a["output_id"]) for a in shuffled_subset(convs, 0.5, s)[1]) for s in range(5)}
    assert len(results) > 1
