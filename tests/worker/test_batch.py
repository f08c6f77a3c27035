"""Grouping chunks into padded batches."""

import pytest

from worker.batch import bucket_batches


def test_batches_group_similar_lengths_within_the_token_bound() -> None:
    lengths = [257, 30, 257, 257, 120, 257, 5000]
    batches = bucket_batches(lengths, 800)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) * max(lengths[i] for i in b) <= 800 for b in batches if len(b) > 1)
    assert all(max(lengths[i] for i in b) <= 2 * min(lengths[i] for i in b) for b in batches)
    assert [6] in batches  # longer than the bound: alone
    assert batches == [[1], [4], [0, 2, 3], [5], [6]]  # 30 is not padded to 120, nor 120 to 257


def test_a_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        bucket_batches([3], 0)
