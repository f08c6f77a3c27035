"""bench/kv_policy.py: which runs a session can choose, and the target read from the figures.
(Named apart from tests/server/test_kv_policy.py: test basenames must be unique. The benchmark's
runs ingest MuSiQue passages and ask hundreds of questions: minutes even at `--quick`, so they
are not part of this suite.)"""

import pytest

from bench import kv_policy


def test_a_choice_of_runs_keeps_the_baselines_and_the_order() -> None:
    runs = kv_policy.chosen_runs("none, lazy@50,eager")
    assert [r.name for r in runs] == ["eager", "lazy@50", "none"]
    assert runs[1].tenant(6) == "lazy-50-t2"
    for names, complaint in (("eager,lazy@40,none", "unknown"), ("eager,lazy@50", "none"), ("eager,none", "budget")):
        with pytest.raises(SystemExit, match=complaint):
            kv_policy.chosen_runs(names)


def test_the_target_is_the_share_of_eager_saving_a_budgeted_run_keeps() -> None:
    runs = kv_policy.chosen_runs("eager,lazy@50,admit_on_reuse@50,none")
    ttft = {"eager": [600.0, 800.0], "lazy@50": [900.0, 900.0], "admit_on_reuse@50": [1000.0, 1200.0], "none": [2600.0, 2800.0]}
    samples = {
        "tenantkv_kv_hits_total": {(("tenant", "lazy-50-t0"),): 8.0},
        "tenantkv_kv_misses_total": {(("cause", "evicted"), ("tenant", "lazy-50-t1")): 2.0},
        "tenantkv_kv_stored_bytes": {(("tenant", "eager-t0"),): 1000.0, (("tenant", "lazy-50-t3"),): 80.0},
    }
    report = kv_policy.summary(runs, samples, ttft, {r.name: {} for r in runs}, {"t0": 500}, draws_done=2)
    lazy = report["policies"]["lazy@50"]
    assert (lazy["hit_rate"], lazy["kv_bytes"], lazy["misses"]["evicted"]) == (0.8, 80, 2)
    target = report["target"]
    assert target["best"] == "lazy@50" and target["saving_share"]["lazy@50"] == pytest.approx(1800 / 2000)
    assert target["met"] and target["best_kv_share_of_eager"] == pytest.approx(0.08)
    assert report["draws_done"] == 2 and report["retrieved_kv_bytes"] == 500
