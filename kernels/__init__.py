"""Triton kernels (dequantise + RoPE re-rotation, deviation top-k), each with a torch reference twin,
and RoPE (`kernels.rope`: inverse frequencies and rotation) that those references share with the model.

Imports nothing of ours.
"""
