"""The static-shape decode step (worker.decode_graphs): padded rows and spans give the logits of
the plain step and leave real sequences' KV alone; on a GPU, graph replay agrees with eager bf16."""

import pytest
import torch

from tests.worker.test_llama import random_ids, tiny_random_llama
from worker.decode_graphs import StaticDecode, batch_bucket
from worker.llama import DecodeBatch, LlamaForward, capacity_bucket
from worker.scheduler import SchedulerConfig, decoder_for

VOCAB = 512  # tiny_random_llama's


def prefilled(forward: LlamaForward, n: int, seed: int):
    kv = forward.new_buffer(n)
    forward.forward(random_ids(n, seed=seed, vocab=VOCAB).to(forward.device), kv)
    return kv


def assert_same_kv(got: DecodeBatch, expected: DecodeBatch) -> None:
    assert got.lengths == expected.lengths
    for slot, n in enumerate(expected.lengths):
        torch.testing.assert_close(got.keys[:, slot, :, :n], expected.keys[:, slot, :, :n], atol=1e-5, rtol=0)
        torch.testing.assert_close(got.values[:, slot, :, :n], expected.values[:, slot, :, :n], atol=1e-5, rtol=0)


def test_buckets() -> None:
    assert [batch_bucket(n, 16) for n in (1, 2, 3, 5, 8, 9, 16)] == [1, 2, 4, 8, 8, 16, 16]
    assert [batch_bucket(n, 12) for n in (5, 9, 12)] == [8, 12, 12]
    assert [capacity_bucket(n) for n in (1, 255, 256, 257, 1000, 1025)] == [256, 256, 256, 512, 1024, 2048]


def swap_remove(slot: int, batches: list[DecodeBatch], tokens: torch.Tensor) -> torch.Tensor:
    """Free `slot` in each batch; the tokens reordered as the batches are (the last moves into the slot)."""
    for batch in batches:
        batch.remove(slot)
    return torch.cat([tokens[:slot], tokens[-1:], tokens[slot + 1 : -1]])


@torch.inference_mode()
def test_padded_step_equals_the_plain_step_through_arrivals_departures_and_a_bucket_boundary() -> None:
    """Mixed lengths: 5 sequences padded to 8 rows; after swap-removes 3 (padded to 4) and 2 (not
    padded); then one arrives mid-run (3 again); the longest crosses from the 256-token capacity
    bucket into the 512 one. Logits within 1e-4 (float32) each step, the same KV at the end.
    Under inference mode, as the scheduler runs: the batches grow inside decode steps."""
    forward = LlamaForward(tiny_random_llama("cpu"))
    static = StaticDecode(forward, max_batch_size=8)
    padded, plain = static.new_decode_batch(), forward.new_decode_batch()
    for seed, n in enumerate([3, 250, 40, 100, 7]):
        kv = prefilled(forward, n, seed=30 + seed)
        assert padded.add(kv, room=0) == plain.add(kv, room=0)
    assert padded.keys.shape[1] == 8 and padded.capacity == 256
    tokens = random_ids(5, seed=40, vocab=VOCAB)
    for step in range(10):
        if step == 3:
            tokens = swap_remove(0, [padded, plain], tokens)
            tokens = swap_remove(2, [padded, plain], tokens)
        if step == 5:
            tokens = swap_remove(0, [padded, plain], tokens)
        if step == 7:
            kv = prefilled(forward, 20, seed=50)
            assert padded.add(kv, room=4) == plain.add(kv, room=4) == 2
            tokens = torch.cat([tokens, random_ids(1, seed=51, vocab=VOCAB)])
        expected = forward.decode(tokens, plain)
        got = static.decode(tokens, padded)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
        tokens = expected.argmax(-1)
    assert padded.lengths == [100 + 10, 250 + 10, 20 + 3]
    assert padded.capacity == 512  # crossed into the next bucket
    assert_same_kv(padded, plain)


def test_fixed_slots_keep_their_memory_and_refuse_more_sequences() -> None:
    forward = LlamaForward(tiny_random_llama("cpu"))
    static = StaticDecode(forward, max_batch_size=2)
    batch = static.new_decode_batch()
    kv = prefilled(forward, 10, seed=60)
    batch.add(kv, room=1)
    batch.add(kv, room=1)
    generation = batch.generation
    with pytest.raises(ValueError, match="^slots: "):
        batch.add(kv, room=1)
    batch.remove(0)
    batch.remove(0)
    assert batch.generation == generation and batch.keys.shape[1] == 2  # still there: graphs over it stay valid
    batch.add(kv, room=1)
    with pytest.raises(ValueError, match="^batch: "):
        static.decode(torch.tensor([1]), forward.new_decode_batch())
    with pytest.raises(ValueError, match="^ids: "):
        static.decode(torch.tensor([1, 2]), batch)
    with pytest.raises(ValueError, match="^ids: "):
        static.decode(torch.tensor([VOCAB]), batch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
@torch.inference_mode()
def test_graph_replay_agrees_with_eager_bf16_on_a_gpu() -> None:
    """bf16 on a GPU: replayed graphs give the eager step's logits within bf16's tolerance, each
    step fed the eager step's greedy token; a capacity growth recaptures the graphs."""
    forward = LlamaForward(tiny_random_llama("cuda"))
    assert isinstance(decoder_for(forward, SchedulerConfig()), StaticDecode)
    assert decoder_for(forward, SchedulerConfig(cuda_graphs=False)) is forward
    static = StaticDecode(forward, max_batch_size=4)
    assert static.captures
    padded, plain = static.new_decode_batch(), forward.new_decode_batch()
    for seed, n in enumerate([5, 240, 60]):
        kv = prefilled(forward, n, seed=70 + seed)
        padded.add(kv, room=0)
        plain.add(kv, room=0)
    tokens = random_ids(3, seed=80, vocab=VOCAB).cuda()
    generations = set()
    for _ in range(20):  # the 240-token sequence crosses 256: the KV moves, graphs are captured again
        expected = forward.decode(tokens, plain).float()
        got = static.decode(tokens, padded).float()
        torch.testing.assert_close(got, expected, atol=0.05, rtol=0)
        generations.add(padded.generation)
        tokens = expected.argmax(-1)
    assert len(generations) == 2 and static.graph_count == 1
