"""Do the Triton kernels pay off? Fused dequantise + RoPE and the deviation top-k against their torch twins.

For two model shapes (SmolLM2-135M: 30 layers, 3 KV heads, head dim 64, five 256-token chunks;
a Llama-3-8B-like model: 32 layers, 8 KV heads, head dim 128, 4096 tokens) it times, as the median
of repeated runs:
- placing 4-bit keys: the Triton kernel (CUDA), the torch reference on the GPU and on the CPU;
- blending's selection at the check layer (per-token deviation + top 15%): Triton vs torch;
- decoding whole blobs of each codec to the GPU (zstd on the CPU, expansion on the GPU) and to
  the CPU, in MB/s of fp16 output;
- time to first token of our forward pass with random weights of SmolLM2-135M's architecture
  (float32 on the CPU, bf16 on the GPU) and, on a GPU, of Llama-3.2-1B's and Llama-3-8B's, for
  five 256-token chunks and a question: full prefill, full reuse and blending at 0.15 from packed
  kivi4 KV (answer quality needs the real weights: bench/kv.py).
Every Triton result is checked against its reference. Random KV: ratios here say nothing about
compression (bench/codec.py measures that on real KV). Without a GPU only the torch rows run.

    python bench/kernel_speed.py [--quick] [--out bench/results/kernel_speed.json]
"""

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import kvcodec  # noqa: E402
from kernels.deviation import token_deviation_reference, top_deviations  # noqa: E402
from kernels.rope_dequant import dequant_rope, dequant_rope_reference  # noqa: E402
from worker.blend import Blender, ChunkKV, PrefillMode  # noqa: E402
from worker.llama import LlamaForward  # noqa: E402
from kernels.rope import RopeConfig, inverse_frequencies  # noqa: E402


@dataclass(frozen=True, slots=True)
class Shape:
    name: str
    layers: int
    kv_heads: int
    head_dim: int
    tokens: int

    @property
    def fp16_bytes(self) -> int:
        return self.layers * 2 * self.kv_heads * self.tokens * self.head_dim * 2


SHAPES = [Shape("smollm2_135m", 30, 3, 64, 1280), Shape("llama3_8b", 32, 8, 128, 4096)]


def median_ms(fn, device: torch.device, repeats: int) -> float:
    """Median wall time of `fn()` in ms, the device synchronised around each call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def random_kv(shape: Shape) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(shape.layers, 2, shape.kv_heads, shape.tokens, shape.head_dim, generator=generator)


def bench_dequant_rope(shape: Shape, devices: list[torch.device], repeats: int) -> dict:
    packed = kvcodec.decode_packed(kvcodec.encode(random_kv(shape), "kivi4")).keys
    positions = torch.arange(1000, 1000 + shape.tokens)
    inv = inverse_frequencies(RopeConfig(head_dim=shape.head_dim, theta=500000.0))
    row = {}
    for device in devices:
        args = [t.to(device) for t in (packed.codes, packed.scale, packed.low, positions, inv)]
        reference = lambda: dequant_rope_reference(*args, packed.bits, packed.group)  # noqa: E731
        row[f"torch_{device.type}_ms"] = median_ms(reference, device, repeats)
        if device.type == "cuda":
            fused = lambda: dequant_rope(*args, packed.bits, packed.group)  # noqa: E731
            row["triton_cuda_ms"] = median_ms(fused, device, repeats)
            row["max_abs_error"] = float((fused() - reference()).abs().max())
    return row


def bench_selection(shape: Shape, devices: list[torch.device], repeats: int) -> dict:
    generator = torch.Generator().manual_seed(1)
    fresh = torch.randn(shape.kv_heads, shape.tokens, shape.head_dim, generator=generator)
    cached = fresh + 0.1 * torch.randn(fresh.shape, generator=generator)
    count = round(0.15 * shape.tokens)
    row = {}
    for device in devices:
        a, b = fresh.to(device), cached.to(device)
        reference = lambda: torch.topk(token_deviation_reference(a, b), count).indices.sort().values  # noqa: E731
        row[f"torch_{device.type}_ms"] = median_ms(reference, device, repeats)
        if device.type == "cuda":
            row["triton_cuda_ms"] = median_ms(lambda: top_deviations(a, b, count), device, repeats)
            row["same_selection"] = bool(torch.equal(top_deviations(a, b, count), reference()))
    return row


def bench_decode(shape: Shape, devices: list[torch.device], repeats: int) -> dict:
    kv = random_kv(shape)
    rows = {}
    for codec in sorted(kvcodec.CODECS):
        blob = kvcodec.encode(kv, codec)
        rows[codec] = {
            f"decode_{device.type}_mb_s": shape.fp16_bytes / 1e6 / (median_ms(lambda: kvcodec.decode(blob, device), device, repeats) / 1e3)
            for device in devices
        }
    return rows


MODEL_SHAPES = {  # LlamaConfig fields of each architecture; the weights are random
    "smollm2_135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0, tie_word_embeddings=True),
    "llama3.2_1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                        num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0, tie_word_embeddings=True),
    "llama3_8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0),
}


def random_forward(shape: str, device: torch.device, **overrides) -> LlamaForward:
    """Our forward over randomly initialised weights of `shape`, made on `device` (bf16 on a GPU);
    `overrides`: LlamaConfig fields that replace the shape's (fewer layers for smoke runs)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(max_position_embeddings=8192, **{**MODEL_SHAPES[shape], **overrides})
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    return LlamaForward(model)


def bench_prefill(forward: LlamaForward, repeats: int) -> dict:
    """Median ms to the first token's logits per mode: five 256-token chunks (KV loaded, packed kivi4) and a question."""
    generator = torch.Generator().manual_seed(2)
    device = forward.device
    ids = lambda n: torch.randint(0, forward.vocab_size, (n,), generator=generator)  # noqa: E731
    system, chunk_ids, question = ids(30), [ids(256) for _ in range(5)], ids(40)
    blender = Blender(forward, system)
    packed = [ChunkKV(t, kvcodec.decode_packed(kvcodec.encode(blender.prefill_chunk(t).kv, "kivi4")).to(device)) for t in chunk_ids]
    modes = {
        "full_prefill": lambda: blender.blend_prefill(packed, question, mode=PrefillMode.FULL_PREFILL),
        "full_reuse": lambda: blender.blend_prefill(packed, question, mode=PrefillMode.FULL_REUSE),
        "blend_0.15": lambda: blender.blend_prefill(packed, question, recompute_ratio=0.15),
    }
    return {f"{mode}_ms": median_ms(run, device, repeats) for mode, run in modes.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small shape, few repeats: a smoke run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "kernel_speed.json")
    args = parser.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    shapes, repeats = (SHAPES[:1], 3) if args.quick else (SHAPES, 20)
    report = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu only",
        "cpu_threads": torch.get_num_threads(),
        "shapes": {},
    }
    for shape in shapes:
        result = {
            **asdict(shape),
            "dequant_rope_kivi4": bench_dequant_rope(shape, devices, repeats),
            "select_top15": bench_selection(shape, devices, repeats),
            "decode": bench_decode(shape, devices, max(3, repeats // 4)),
        }
        report["shapes"][shape.name] = result
        print(f"\n{shape.name}: {shape.layers} layers x {shape.kv_heads} kv heads x {shape.tokens} tokens x {shape.head_dim}")
        for step in ("dequant_rope_kivi4", "select_top15"):
            row = result[step]
            cells = "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
            print(f"  {step:<20}{cells}")
        for codec, row in result["decode"].items():
            print(f"  decode {codec:<13}" + "  ".join(f"{k} {v:.0f}" for k, v in row.items()))
    print("\nrandom weights, 1,350-token prompt: ms to the first token")
    report["prefill"] = {}
    for device in devices:
        for shape in list(MODEL_SHAPES)[: 1 if args.quick or device.type == "cpu" else None]:
            row = report["prefill"].setdefault(shape, {})[device.type] = bench_prefill(random_forward(shape, device), max(3, repeats // 4))
            print(f"  {shape:<14}{device.type:<6}" + "  ".join(f"{k} {v:.1f}" for k, v in row.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
