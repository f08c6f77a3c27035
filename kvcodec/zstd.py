"""zstd with one compressor and decompressor per thread (creating them per call costs more than small blobs)."""

import threading

import zstandard

LEVEL = 3
_local = threading.local()


def _contexts() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    if not hasattr(_local, "contexts"):
        _local.contexts = (zstandard.ZstdCompressor(level=LEVEL), zstandard.ZstdDecompressor())
    return _local.contexts


def compress(data: bytes) -> bytes:
    return _contexts()[0].compress(data)


def decompress(data: memoryview | bytes) -> bytes:
    return _contexts()[1].decompress(data)
