"""KV cache codecs: encode(tensor) -> self-describing bytes, decode(bytes) -> tensor.

May import `kernels`.
"""

from kvcodec.codec import CODECS, codec_of, decode, encode
from kvcodec.header import CorruptBlobError

__all__ = ["CODECS", "CorruptBlobError", "codec_of", "decode", "encode"]
