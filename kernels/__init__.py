"""Triton kernels (dequantise + RoPE re-rotation, deviation top-k), each with a torch reference twin.

Imports nothing of ours.
"""
