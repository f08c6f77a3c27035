"""The `tenantkv` command against a real server: admin, resumable ingest, search and ask with filters."""

import json
from pathlib import Path

import pytest

from server.cli import main
from tests.server.conftest import unit_vectors


@pytest.fixture
def as_admin(server, server_config, monkeypatch):
    monkeypatch.setenv("TENANTKV_SERVER", server.address)
    monkeypatch.setenv("TENANTKV_API_KEY", server_config.admin_key_path.read_text().strip())


def run(capsys, *argv: str) -> list[str]:
    assert main(list(argv)) == 0
    return capsys.readouterr().out.splitlines()


def test_admin_commands(as_admin, capsys) -> None:
    created = json.loads(run(capsys, "admin", "tenants", "create", "acme")[0])
    assert created["tenantId"] == "acme"
    assert [json.loads(line)["tenantId"] for line in run(capsys, "admin", "tenants", "list")] == ["acme"]
    key = json.loads(run(capsys, "admin", "keys", "create", "--tenant", "acme", "--rights", "read")[0])
    assert key["apiKey"].startswith("tkv_")
    assert json.loads(run(capsys, "admin", "tenants", "get", "acme")[0])["stats"]["apiKeys"] == "1"
    run(capsys, "admin", "keys", "revoke", key["keyId"])
    assert json.loads(run(capsys, "admin", "tenants", "delete", "acme")[0]) == {"deleted_chunks": 0}


def test_tenants_list_pages_through(as_admin, admin, capsys) -> None:
    for name in ["carol", "alice", "bob"]:
        admin.create_tenant(name)
    listed = [json.loads(line) for line in run(capsys, "admin", "tenants", "list", "--page-size", "2")]
    assert [t["tenantId"] for t in listed] == ["alice", "bob", "carol"]
    assert not any("stats" in t for t in listed)
    listed = [json.loads(line) for line in run(capsys, "admin", "tenants", "list", "--page-size", "1", "--usage")]
    assert [t["tenantId"] for t in listed] == ["alice", "bob", "carol"]
    assert all("stats" in t for t in listed)


def test_errors_are_reported_not_raised(as_admin, capsys) -> None:
    assert main(["admin", "tenants", "get", "nobody"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_ingest_is_resumable_then_ask(as_admin, admin, capsys, tmp_path: Path) -> None:
    admin.create_tenant("acme")
    vectors = unit_vectors(5, seed=31)
    lines = [json.dumps({"id": f"v{i}", "chunks": [f"vector passage {i}"], "vectors": [v.tolist()]}) for i, v in enumerate(vectors)]
    lines.append(json.dumps({"id": "rome", "text": "Rome is the capital city of Italy.", "metadata": {"lang": "en"}}))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    progress = tmp_path / "corpus.jsonl.progress"
    progress.write_text("2")  # as if an earlier run had two documents acknowledged
    run(capsys, "ingest", "--tenant", "acme", "--batch", "2", str(corpus))
    assert not progress.exists()
    assert admin.get_tenant("acme").stats.documents == 4  # v0 and v1 were skipped
    assert admin.get_tenant("acme").stats.api_keys == 0  # the temporary key is revoked
    run(capsys, "ingest", "--tenant", "acme", str(corpus))
    assert admin.get_tenant("acme").stats.documents == 6
    for mode in ("blend", "full_prefill", "full_reuse"):
        answer = run(capsys, "ask", "--tenant", "acme", "-k", "1", "--max-new-tokens", "8", "--mode", mode, "What is the capital of Italy?")
        assert "".join(answer).strip()
    hits = [json.loads(line) for line in run(capsys, "search", "--tenant", "acme", "-k", "5", "--where", 'lang = "en"', "capital of Italy")]
    assert [h["externalId"] for h in hits] == ["rome"]
    assert main(["ask", "--tenant", "acme", "-k", "1", "--max-new-tokens", "2", "--where", 'lang in ["en"] and not lang = "fr"', "Capital?"]) == 0
    assert "[chunks: rome#0]" in capsys.readouterr().err


def test_bad_jsonl_line_names_the_line(as_admin, admin, tmp_path: Path) -> None:
    admin.create_tenant("acme")
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text('{"id": "ok", "text": "fine"}\nnot json\n')
    with pytest.raises(SystemExit, match="line 2"):
        main(["ingest", "--tenant", "acme", str(corpus)])
