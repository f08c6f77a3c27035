"""Triton kernels (dequantise + RoPE re-rotation, deviation top-k), each with a torch reference twin,
and the RoPE rotation (`kernels.rope`) those references share with the model.

Imports nothing of ours.
"""
