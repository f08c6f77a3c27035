"""A stopped and restarted server keeps every acknowledged chunk and forgets every deleted one."""

from server.app import ServerThread
from client.api import Client
from tests.server.conftest import unit_vectors, vector_documents


def test_restart_keeps_acknowledged_and_forgets_deleted(server_config, models) -> None:
    vectors = unit_vectors(6, seed=11)
    with ServerThread(server_config, models) as server:
        admin_key = server_config.admin_key_path.read_text().strip()
        with Client(server.address, admin_key) as admin:
            admin.create_tenant("alice")
            admin.create_tenant("bob")
            alice_key = admin.create_api_key("alice").api_key
            bob_key = admin.create_api_key("bob").api_key
            with Client(server.address, alice_key) as alice:
                alice.upsert([vector_documents("d", vectors)])
                alice.delete(["d-2"])
            admin.grant("alice", ["d-4"], "bob")
            admin.grant("alice", ["d-5"], "bob")
            admin.revoke("alice", ["d-5"], "bob")

    with ServerThread(server_config, models) as server:
        assert server_config.admin_key_path.read_text().strip() == admin_key
        with Client(server.address, alice_key) as alice, Client(server.address, bob_key) as bob:
            kept = {h.external_id for h in alice.search(vectors[0], k=10).hits}
            assert kept == {"d-0", "d-1", "d-3", "d-4", "d-5"}
            assert alice.search(vectors[2], k=1).hits[0].external_id != "d-2"
            assert [h.external_id for h in bob.search(vectors[4], k=10).hits] == ["d-4"]
