"""zstd with one compressor per level and one decompressor per thread (creating them per call costs more than small blobs)."""

import threading

import zstandard

LEVEL = 3
_local = threading.local()


def compress(data: bytes, level: int = LEVEL) -> bytes:
    compressors = _local.__dict__.setdefault("compressors", {})
    if level not in compressors:
        compressors[level] = zstandard.ZstdCompressor(level=level)
    return compressors[level].compress(data)


def decompress(data: memoryview | bytes) -> bytes:
    if not hasattr(_local, "decompressor"):
        _local.decompressor = zstandard.ZstdDecompressor()
    return _local.decompressor.decompress(data)
