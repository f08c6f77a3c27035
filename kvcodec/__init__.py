"""KV cache codecs: encode(tensor) -> self-describing bytes, decode(bytes) -> tensor.

May import `kernels`.
"""

from kvcodec.codec import CODECS, BlobInfo, blob_info, codec_of, decode, decode_packed, encode
from kvcodec.header import CorruptBlobError
from kvcodec.packed import PackedKV

__all__ = ["CODECS", "BlobInfo", "CorruptBlobError", "PackedKV", "blob_info", "codec_of", "decode", "decode_packed", "encode"]
