"""KV cache codecs: encode(tensor) -> self-describing bytes, decode(bytes) -> tensor.

May import `kernels`.
"""

from kvcodec.codec import CODECS, codec_of, decode, decode_packed, encode
from kvcodec.header import CorruptBlobError
from kvcodec.packed import PackedKV

__all__ = ["CODECS", "CorruptBlobError", "PackedKV", "codec_of", "decode", "decode_packed", "encode"]
