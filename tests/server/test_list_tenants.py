"""ListTenants through a real server: pages in name order, usage only when asked, bad paging input named."""

import base64

import grpc
import pytest

from server.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from tests.server.conftest import unit_vectors, vector_documents


def test_pages_cover_every_tenant_once_in_name_order(admin) -> None:
    names = ["delta", "alpha", "echo", "a-1", "charlie", "bravo", "a_2"]
    for name in names:
        admin.create_tenant(name)
    pages, token = [], ""
    while True:
        reply = admin.list_tenants_page(page_size=3, page_token=token)
        pages.append([t.tenant_id for t in reply.tenants])
        token = reply.next_page_token
        if not token:
            break
        if len(pages) == 1:
            admin.delete_tenant(reply.tenants[-1].tenant_id)  # the page after it starts past a name that is gone
            admin.create_tenant("zulu")  # created mid-listing, after the cursor: listed
    expected = sorted(names)
    expected.remove(pages[0][-1])
    assert pages == [sorted(names)[:3], expected[2:5], [*expected[5:], "zulu"]]
    assert [t.tenant_id for t in admin.list_tenants(page_size=2)] == [*expected, "zulu"]


def test_exact_multiple_of_the_page_size_ends_with_an_empty_token(admin) -> None:
    for name in ["a", "b", "c", "d"]:
        admin.create_tenant(name)
    first = admin.list_tenants_page(page_size=2)
    last = admin.list_tenants_page(page_size=2, page_token=first.next_page_token)
    assert [t.tenant_id for t in last.tenants] == ["c", "d"]
    assert last.next_page_token == ""
    assert admin.list_tenants_page(page_size=4).next_page_token == ""


def test_usage_only_when_asked(alice, admin) -> None:
    alice.client.upsert([vector_documents("a", unit_vectors(3, seed=41))])
    admin.create_tenant("bob")
    plain = admin.list_tenants()
    assert [t.tenant_id for t in plain] == ["alice", "bob"]
    assert not any(t.HasField("stats") for t in plain)
    assert all(t.settings.kv_codec == "" and t.created_unix_ms > 0 for t in plain)
    with_usage = admin.list_tenants(with_usage=True, page_size=1)
    assert [t.stats for t in with_usage] == [admin.get_tenant("alice").stats, admin.get_tenant("bob").stats]
    assert (with_usage[0].stats.chunks, with_usage[0].stats.api_keys) == (3, 1)


def test_default_page_size(admin) -> None:
    for i in range(DEFAULT_PAGE_SIZE + 1):
        admin.create_tenant(f"t{i:04d}")
    first = admin.list_tenants_page()
    assert len(first.tenants) == DEFAULT_PAGE_SIZE and first.next_page_token
    assert [t.tenant_id for t in admin.list_tenants_page(page_token=first.next_page_token).tenants] == [f"t{DEFAULT_PAGE_SIZE:04d}"]
    assert len(admin.list_tenants_page(page_size=MAX_PAGE_SIZE).tenants) == DEFAULT_PAGE_SIZE + 1


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "request_fields, field",
    [
        ({"page_size": MAX_PAGE_SIZE + 1}, "page_size"),
        ({"page_size": -1}, "page_size"),
        ({"page_token": "not a token!"}, "page_token"),
        ({"page_token": "YWJ"}, "page_token"),  # missing padding
        ({"page_token": "é"}, "page_token"),
        ({"page_token": base64.urlsafe_b64encode(b"\xff\xfe").decode()}, "page_token"),  # not UTF-8
        ({"page_token": _b64("Not A Name")}, "page_token"),
    ],
)
def test_bad_paging_input_is_invalid_argument_naming_the_field(admin, request_fields: dict, field: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        admin.list_tenants_page(**request_fields)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert err.value.details().startswith(f"{field}:")
