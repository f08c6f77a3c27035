"""bench/serving.py: its question stream is Zipf-skewed, so chunks recur; its table bounds what any
routing could reach. (Its `--quick` run starts 5 servers and 7 workers: minutes even on an idle
machine, so it is not part of this suite.)"""

from collections import Counter

from bench import serving


def test_the_stream_is_skewed_and_reproducible() -> None:
    stream = serving.zipf_stream(100, 400)
    assert stream == serving.zipf_stream(100, 400) and set(stream) <= set(range(100))
    counts = Counter(stream).most_common()
    assert counts[0][1] > 400 / 100 * 10  # the most popular question is asked far more than its share
    assert len(counts) < 100  # and some are never asked


def test_the_table_states_what_any_routing_could_reach(capsys) -> None:
    row = {"fetched_bytes_per_answer": 1e6, "ttft_p50_ms": 1.0, "ttft_p99_ms": 2.0, "answers_per_s": 1.0, "decisions": {}}
    report = {
        "routing": {
            "locality": {**row, "hit_rate": 0.6, "hit_rate_ceiling": 0.8},
            "round_robin": {**row, "hit_rate": 0.5, "hit_rate_ceiling": 0.8},
        },
        "hop": {"in_process_ttft_p50_ms": 100.0, "remote_ttft_p50_ms": 105.0},
    }
    serving.print_table(report)
    assert "x round robin: hit rate 1.60x, misses (bytes fetched) 0.40x" in capsys.readouterr().out
