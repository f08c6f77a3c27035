"""bench/serving.py: its question stream is Zipf-skewed, so chunks recur. (Its `--quick` run starts 5
servers and 7 workers: minutes even on an idle machine, so it is not part of this suite.)"""

from collections import Counter

from bench import serving


def test_the_stream_is_skewed_and_reproducible() -> None:
    stream = serving.zipf_stream(100, 400)
    assert stream == serving.zipf_stream(100, 400) and set(stream) <= set(range(100))
    counts = Counter(stream).most_common()
    assert counts[0][1] > 400 / 100 * 10  # the most popular question is asked far more than its share
    assert len(counts) < 100  # and some are never asked
