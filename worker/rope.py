"""RoPE now lives in `kernels.rope`. These names remain only until worker/llama.py,
tests/worker/test_llama.py and bench/kernel_speed.py import them from there; then this file goes."""

from kernels.rope import RopeConfig, inverse_frequencies

__all__ = ["RopeConfig", "inverse_frequencies"]
