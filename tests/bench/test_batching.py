"""bench/batching.py's gpu section, run on the CPU at its toy size (`SMOKE`) so that its code runs
without a GPU: there the padded static step runs eagerly, and float32 gives the plain step's tokens."""

import torch

from bench import batching


def test_the_gpu_section_runs_on_the_cpu_and_the_padded_step_keeps_the_tokens(capsys) -> None:
    report = batching.gpu_section(torch.device("cpu"), **batching.SMOKE)
    assert report["device"] == "cpu"
    row = report["shapes"]["smollm2_135m"]
    assert set(row["decode"]) == {"1", "3"}
    for decode in row["decode"].values():
        assert decode["eager_tokens_per_s"] > 0 and decode["graphs_tokens_per_s"] > 0
        assert decode["greedy_agreement"] == 1.0
    assert {"full_prefill_ms", "full_reuse_ms", "blend_0.15_ms", "full_over_blend"} <= set(row["prefill"])
    batching.print_gpu_table(report)
    assert "smollm2_135m      3" in capsys.readouterr().out
