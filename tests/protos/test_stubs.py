"""The checked-in stubs must be what the protos generate today."""

import importlib.util
from pathlib import Path

from protos.tenantkv.v1 import ingest_pb2, kv_cache_pb2, retrieval_pb2, tenant_admin_pb2

REPO = Path(__file__).resolve().parents[2]


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_protos", REPO / "scripts" / "gen_protos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_checked_in_stubs_are_fresh(tmp_path: Path) -> None:
    gen = _load_generator()
    gen.generate(tmp_path)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*") if p.is_file())
    assert generated, "protoc generated nothing"
    for rel in generated:
        checked_in = REPO / rel
        assert checked_in.exists(), f"{rel} is not checked in: run `make protos`"
        assert checked_in.read_text() == (tmp_path / rel).read_text(), f"{rel} is stale: run `make protos`"


def test_services_live_in_package_tenantkv_v1() -> None:
    services = {
        name: module.DESCRIPTOR.services_by_name[name].full_name
        for module, name in [
            (tenant_admin_pb2, "TenantAdmin"),
            (ingest_pb2, "Ingest"),
            (retrieval_pb2, "Retrieval"),
            (kv_cache_pb2, "KVCache"),
        ]
    }
    assert services == {name: f"tenantkv.v1.{name}" for name in services}


def test_enums_start_with_unspecified_zero() -> None:
    for module in (tenant_admin_pb2, ingest_pb2, retrieval_pb2, kv_cache_pb2):
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            assert enum.values_by_number[0].name.endswith("_UNSPECIFIED"), enum.full_name


def test_messages_are_named_after_their_rpc() -> None:
    for module in (tenant_admin_pb2, ingest_pb2, retrieval_pb2, kv_cache_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                assert method.input_type.name == f"{method.name}Request"
                assert method.output_type.name == f"{method.name}Response"
