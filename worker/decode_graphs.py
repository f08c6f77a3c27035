"""The batched decode step over fixed shapes, replayed from CUDA graphs on a GPU.

On a GPU a small model's decode step is bound by kernel launches, not by the GPU: eager PyTorch
pays each layer's dozen launches from Python. A CUDA graph records the step's kernels once and
replays them in one launch, but only for fixed shapes and fixed addresses. So the step here is
`LlamaForward.decode_layers` over padded shapes:

- the rows are padded up to a batch bucket (powers of two up to `max_batch_size`, and that
  size itself); a padded row i holds token 0 at position 0 of slot i, a slot no sequence uses
  (the real rows fill slots 0..n-1), so it never touches a real sequence's KV;
- attention spans a capacity bucket (a power of two, at least 256 tokens) instead of the
  longest sequence, masked per row from the positions;
- token ids and positions live in buffers allocated once; the mask is computed from the
  positions inside the step;
- the KV is a `DecodeBatch` with fixed slots (`max_batch_size`) whose capacity grows by whole
  buckets and whose memory stays while empty, so its tensors move only when the capacity
  grows (a few times a run). When they move, every graph is dropped and captured again on next
  use: cheaper than allocating every slot at the model's full context (16 x 8,192 tokens of
  Llama-3-8B KV would be 17 GB) for a run that never needs it.

One graph per (batch bucket, capacity bucket), captured on first use after warm-up runs on a
side stream (as PyTorch requires). Each run of the step writes the same KV at the same places,
so the warm-up runs and the replay that follows leave the KV as one run would. On the CPU the
same padded step runs eagerly: its padding and masking are tested there; the scheduler uses
plain `LlamaForward.decode` on the CPU, which attends over the longest sequence only.
"""

import torch

from worker.llama import DecodeBatch, LlamaForward, capacity_bucket, causal_mask

WARM_UP_RUNS = 2


def batch_bucket(rows: int, max_batch_size: int) -> int:
    """The rows a step of `rows` sequences is padded to: the next power of two, at most `max_batch_size`."""
    return min(1 << (rows - 1).bit_length(), max_batch_size)


class StaticDecode:
    """`LlamaForward.decode` over padded shapes, from CUDA graphs where the model is on a GPU."""

    def __init__(self, forward: LlamaForward, max_batch_size: int) -> None:
        self.forward = forward
        self.max_batch_size = max_batch_size
        self.captures = forward.device.type == "cuda"
        self._ids = torch.zeros(max_batch_size, dtype=torch.long, device=forward.device)
        self._positions = torch.zeros(max_batch_size, dtype=torch.long, device=forward.device)
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._captured_over: tuple[DecodeBatch, int] | None = None  # the batch and generation the graphs hold
        self._pool = torch.cuda.graph_pool_handle() if self.captures else None

    @property
    def graph_count(self) -> int:
        return len(self._graphs)

    def new_decode_batch(self) -> DecodeBatch:
        return self.forward.new_decode_batch(fixed_slots=self.max_batch_size)

    @torch.inference_mode()
    def decode(self, ids: torch.Tensor, batch: DecodeBatch) -> torch.Tensor:
        """As `LlamaForward.decode`: one token for each sequence of `batch` (made by `new_decode_batch`); logits [n, vocab]."""
        if batch.fixed_slots < self.max_batch_size:
            raise ValueError(f"batch: needs {self.max_batch_size} fixed slots (new_decode_batch), has {batch.fixed_slots}")
        ids = self.forward.check_decode(ids, batch)
        n = len(batch)
        rows = batch_bucket(n, self.max_batch_size)
        self._ids[:n].copy_(ids)
        self._ids[n:rows].zero_()
        self._positions[:n].copy_(torch.tensor(batch.lengths))
        self._positions[n:rows].zero_()
        batch.extend()
        span = capacity_bucket(max(batch.lengths))
        if not self.captures:
            return self._step(batch, rows, span)[:n]
        with torch.cuda.device(self.forward.device):  # graphs capture and replay on the current device's streams
            return self._replay(batch, rows, span)[:n].clone()

    def _step(self, batch: DecodeBatch, rows: int, span: int) -> torch.Tensor:
        """The padded step on the static buffers: logits [rows, vocab]."""
        positions = self._positions[:rows]
        visible = causal_mask(positions, span)[:, None, None, :]
        keys, values = batch.keys[:, :rows, :, :span], batch.values[:, :rows, :, :span]
        return self.forward.decode_layers(self._ids[:rows], positions, keys, values, visible)

    def _replay(self, batch: DecodeBatch, rows: int, span: int) -> torch.Tensor:
        if self._captured_over != (batch, batch.generation):  # the KV moved: graphs hold the old addresses
            self._graphs.clear()
            self._captured_over = (batch, batch.generation)
        if (rows, span) not in self._graphs:
            self._graphs[rows, span] = self._capture(batch, rows, span)
        graph, logits = self._graphs[rows, span]
        graph.replay()
        return logits

    def _capture(self, batch: DecodeBatch, rows: int, span: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        side = torch.cuda.Stream(self.forward.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARM_UP_RUNS):
                self._step(batch, rows, span)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads (a request's KV moved to the GPU) may use CUDA meanwhile
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            logits = self._step(batch, rows, span)
        return graph, logits
