"""The demo: per tenant, blended against full prefill time to first token; and as a process, a warm
start and an exit without nanobind's leak report."""

import os
import re
import subprocess
import sys
from pathlib import Path

from client.api import DocumentText
from server.demo import TOPICS, DemoTenant, run_demo

TENANTS = [
    DemoTenant(
        "maths",
        "What is a prime number?",
        [
            DocumentText("primes", text="A prime number is a natural number greater than one with no divisors but one and itself."),
            DocumentText("groups", text="A group is a set with an associative operation, an identity and inverses."),
        ],
    ),
    DemoTenant(
        "physics",
        "What is a black hole?",
        [
            DocumentText("holes", text="A black hole is a region of spacetime from which nothing, not even light, escapes."),
            DocumentText("heat", text="Absolute zero is the lowest temperature, where particles have the least energy."),
        ],
    ),
]
LINE = re.compile(r"^\[(\w+)\] first token, median of 3: blended (\d+) ms, full prefill (\d+) ms, full / blended (\d+\.\d\d)x$", re.M)


def test_each_tenant_gets_its_blended_and_full_prefill_line(server, server_config, capsys) -> None:
    comparisons = run_demo(server.address, server_config.admin_key_path.read_text().strip(), TENANTS, repeats=3, max_new_tokens=2)
    output = capsys.readouterr().out
    lines = LINE.findall(output)
    assert [tenant for tenant, *_ in lines] == ["maths", "physics"]
    for (tenant, blend, full, ratio), comparison in zip(lines, comparisons):
        assert comparison.tenant_id == tenant and comparison.blend_ms > 0 and comparison.full_ms > 0
        assert (int(blend), int(full)) == (round(comparison.blend_ms), round(comparison.full_ms))
        assert float(ratio) == round(comparison.full_ms / comparison.blend_ms, 2)
    assert "owners ['maths']" in output and "owners ['physics']" in output
    assert "PERMISSION_DENIED" in output
    assert "leaked" not in output


def test_the_demo_process_warms_up_and_exits_without_leak_reports(model_cache_dir: Path, models) -> None:
    """torch imports triton; with the server's objects frozen for the gc, nanobind reported them as leaked at exit.
    (`models` has converted the GGUF into the cache the process loads from.)"""
    env = {**os.environ, "TENANTKV_CACHE_DIR": str(model_cache_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "server.demo", "--docs", "1", "--repeats", "1", "--max-new-tokens", "2"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert re.search(r"warmed up in \d+\.\d s", output)
    assert [t.tenant_id for t in TOPICS] == re.findall(r"^\[(\w+)\] first token, median of 1:", output, re.M)
    assert "server stopped" in output
    assert "leaked" not in output
