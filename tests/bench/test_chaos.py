"""bench/chaos.py: its consistency check catches what it must, and its quick profile meets the goal's targets."""

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


def test_quick_profile_meets_the_targets(models, model_cache_dir, tmp_path) -> None:
    report = chaos.run(chaos.QUICK, models, model_cache_dir, tmp_path)
    assert report["isolation_steps"] >= chaos.QUICK.isolation_steps and report["leaks"] == 0
    assert report["sigkill_rounds"] == chaos.QUICK.sigkill_rounds == sum(report["kills_during"].values())
    assert report["lost_acknowledged"] == 0 and report["partial_batches"] == 0 and report["index_store_mismatches"] == 0
    assert report["hostile_cases"] >= 100 and report["internal_errors"] == 0 and report["crashes"] == 0
    assert report["victim_search_p99_ms"]["before"] > 0 and report["victim_search_p99_ms"]["after"] > 0
