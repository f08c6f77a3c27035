"""bench/chaos.py: its consistency check catches what it must, and its quick profile meets the goal's targets."""

import numpy as np

from bench import chaos
from client.api import Client, DocumentText
from tests.server.conftest import unit_vectors as vectors


def test_check_counts_lost_writes_undone_deletes_and_store_index_mismatch(server, admin) -> None:
    admin.create_tenant("a")
    expected = chaos.Expected()
    expected.add_tenant("a", admin.create_api_key("a").api_key, with_kv=True)
    kept, deleted_but_stored, never_written = vectors(2, 1), vectors(1, 2), vectors(1, 3)
    with Client(server.address, expected.keys["a"]) as client:
        client.upsert([[
            DocumentText("kept", chunks=["kept 0", "kept 1"], vectors=list(kept)),
            DocumentText("gone", chunks=["gone 0"], vectors=list(deleted_but_stored)),
        ]])
    expected.docs["a"] = {"kept": kept, "ghost": never_written}
    expected.deleted["a"] = {"gone": deleted_but_stored}

    tally = chaos.CrashTally()
    chaos.check(admin, server.address, expected, tally)
    assert tally.lost_acknowledged == 2  # "ghost" missing, "gone" still there
    assert tally.index_store_mismatches == 1  # the store holds 3 chunks; the expected documents account for 2


def test_a_call_applied_in_part_is_a_partial_batch(server, admin) -> None:
    admin.create_tenant("a")
    expected = chaos.Expected()
    expected.add_tenant("a", admin.create_api_key("a").api_key, with_kv=True)
    written, unwritten = vectors(1, 4), vectors(2, 5)
    with Client(server.address, expected.keys["a"]) as client:
        client.upsert([[DocumentText("d0", chunks=["d0"], vectors=list(written))]])
    write = chaos.Write(chaos.UPSERT, "a", {"d0": written, "d1": unwritten})

    tally = chaos.CrashTally()
    chaos.resolve_in_flight(admin, server.address, expected, write, tally)
    assert tally.partial_batches == 1
    assert set(expected.docs["a"]) == {"d0"}  # expected now follows what the server holds
    chaos.check(admin, server.address, expected, tally)
    assert tally.lost_acknowledged == 0 and tally.index_store_mismatches == 0


def test_a_kill_is_tallied_under_the_call_the_round_aims_at() -> None:
    """A kill inside the upsert that retrains the index counts as `retrain`, inside a compaction
    (a compaction round's writes go on beside it) as `compaction`; any other call under its own kind."""
    expected = chaos.Expected()
    expected.add_tenant("a", "key", with_kv=True)
    retraining = chaos.Workload("127.0.0.1:1", "admin-key", expected, chaos.RETRAIN, seed=0)
    assert retraining.killed_during() == "between calls"
    crossing = chaos.Write(chaos.UPSERT, "a", {f"bulk-{i}": vectors(1, i) for i in range(chaos.MIN_TRAIN_VECTORS)})
    retraining.in_flight, retraining.focus_in_flight = crossing, crossing.focus_of(chaos.RETRAIN, 0)
    assert retraining.killed_during() == chaos.RETRAIN
    retraining.focus_in_flight = crossing.focus_of(chaos.RETRAIN, chaos.MIN_TRAIN_VECTORS)  # trained already
    assert retraining.killed_during() == chaos.UPSERT
    compacting = chaos.Workload("127.0.0.1:1", "admin-key", expected, chaos.COMPACTION, seed=0)
    assert {compacting._kind() for _ in range(20)} == {chaos.UPSERT, chaos.DELETE}
    compacting.in_flight = chaos.next_write(chaos.DELETE, expected, np.random.default_rng(0))
    assert compacting.killed_during() == chaos.UPSERT  # nothing to delete yet: an upsert
    compacting.focus_in_flight = True
    assert compacting.killed_during() == chaos.COMPACTION


def test_quick_profile_meets_the_targets(models, model_cache_dir, tmp_path) -> None:
    report = chaos.run(chaos.QUICK, models, model_cache_dir, tmp_path)
    assert report["isolation_steps"] >= chaos.QUICK.isolation_steps and report["leaks"] == 0
    assert report["sigkill_rounds"] == chaos.QUICK.sigkill_rounds == sum(report["kills_during"].values())
    assert set(chaos.ROUND_KINDS[: chaos.QUICK.sigkill_rounds]) >= {chaos.COMPACTION, chaos.RETRAIN}
    assert report["lost_acknowledged"] == 0 and report["partial_batches"] == 0 and report["index_store_mismatches"] == 0
    assert report["hostile_cases"] >= 100 and report["internal_errors"] == 0 and report["crashes"] == 0
    assert report["victim_search_p99_ms"]["before"] > 0 and report["victim_search_p99_ms"]["after"] > 0
