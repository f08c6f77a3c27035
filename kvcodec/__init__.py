"""KV cache codecs: encode(tensor) -> self-describing bytes, decode(bytes) -> tensor.

May import `kernels`.
"""
