"""Model runner: model loading, tokenisation and chunking, embedding, prefill, blending and generation.

May import `kvcodec` and `kernels`.
"""
