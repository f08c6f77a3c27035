"""Consecutive typed arrays read out of one decompressed payload, checked against its length."""

import numpy as np
import torch


class PayloadReader:
    """Each `take` reads the next array; any shortfall, or leftover at `finish`, is an error."""

    def __init__(self, raw: memoryview) -> None:
        self._raw = raw
        self._offset = 0

    def take(self, dtype, shape: tuple[int, ...]) -> torch.Tensor:
        count = int(np.prod(shape))
        size = count * np.dtype(dtype).itemsize
        if self._offset + size > len(self._raw):
            raise ValueError("payload shorter than its shape requires")
        array = np.frombuffer(self._raw, dtype=dtype, count=count, offset=self._offset).reshape(shape)
        self._offset += size
        return torch.from_numpy(array.copy())

    def finish(self) -> None:
        if self._offset != len(self._raw):
            raise ValueError("payload longer than its shape requires")
