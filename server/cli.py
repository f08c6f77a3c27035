"""The `tenantkv` command: serve, worker, admin, restore, ingest, bulk-ingest, search and ask.

Client commands find the server in --server or TENANTKV_SERVER and their key in --api-key-file or
TENANTKV_API_KEY. With --tenant and an admin key, ingest, search and ask mint a short-lived key for that
tenant and revoke it afterwards, so the request's tenant still comes from its key.
"""

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Iterator

import grpc
import uvloop
from google.protobuf import json_format
from tqdm import tqdm

from protos.tenantkv.v1 import tenant_admin_pb2
from client.api import Client, DocumentText
from client.tls import ClientTLS
from server.config import load_config

DEFAULT_SERVER = "127.0.0.1:50051"
TEMPORARY_KEY_TTL_S = 24 * 3600  # keys minted for one --tenant command; revoked when it ends
WHERE_HELP = 'only chunks whose document metadata satisfies it, e.g. \'kind = "contract" and year >= 2020\''


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tenantkv", description="Multi-tenant vector and KV-chunk cache store for RAG")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the server (config: --config TOML, then TENANTKV_* variables)")
    serve.add_argument("--config", type=Path, help="TOML file with ServerConfig keys")
    serve.add_argument("--workers", help="inference workers as HOST:PORT,...; default: one in the server's process")
    serve.set_defaults(run=_serve)

    worker = sub.add_parser("worker", help="run an inference worker that a server's router sends answers and ingestion to")
    worker.add_argument("--store", required=True, help="the server's HOST:PORT, to fetch chunk KV from")
    worker.add_argument("--listen", default="127.0.0.1:50061", help="HOST:PORT to serve on")
    worker.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (the GPU where there is one)")
    worker.add_argument("--api-key-file", type=Path, help="a worker key (admin keys create --worker); default: TENANTKV_API_KEY")
    worker.add_argument("--kv-cache-bytes", type=int, default=1 << 30, help="decoded chunk KV kept in memory")
    worker.add_argument("--kv-codec", default="fp16", help="the codec of KV precomputed without one named")
    worker.add_argument("--max-batch-size", type=int, default=16, help="answers the scheduler batches at once")
    worker.add_argument("--step-tokens", type=int, default=512, help="tokens of model work a scheduler step")
    worker.add_argument("--ingest-batch-tokens", type=int, default=4096, help="padded tokens of chunk KV computed in one pass")
    worker.add_argument("--no-cuda-graphs", action="store_true", help="on a GPU, run decode steps eagerly instead of replaying CUDA graphs")
    worker.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "tenantkv", help="converted copies of GGUF models")
    worker.add_argument("--tls-cert", type=Path, help="this worker's certificate (PEM); with --tls-key, serve over TLS")
    worker.add_argument("--tls-key", type=Path)
    worker.add_argument("--tls-client-ca", type=Path, help="require the router to present a certificate this CA signed (mTLS)")
    worker.add_argument("--store-ca", type=Path, help="the CA bundle the server's certificate chains to (a server on TLS)")
    worker.add_argument("--insecure", action="store_true", help="allow plaintext on a non-loopback --listen address")
    worker.set_defaults(run=_worker)

    admin = sub.add_parser("admin", help="tenants and API keys (needs an admin key)")
    admin_sub = admin.add_subparsers(required=True, metavar="OBJECT")
    tenants = admin_sub.add_parser("tenants").add_subparsers(required=True, metavar="ACTION")
    for action in ("create", "update", "get", "delete"):
        p = tenants.add_parser(action)
        p.add_argument("tenant_id")
        if action in ("create", "update"):
            p.add_argument("--max-chunks", type=int, default=0, help="0: unlimited")
            p.add_argument("--max-kv-bytes", type=int, default=0, help="budget of stored KV; the coldest is dropped beyond it; 0: unlimited")
            p.add_argument("--requests-per-second", type=float, default=0.0, help="0: unlimited")
            p.add_argument("--kv-codec", default="", help="fp16, int8, kivi4, kivi2, ecq; default: the server's")
            p.add_argument("--kv-policy", default="", help="eager, lazy, admit_on_reuse, none; default: the server's")
            p.add_argument("--kv-admit-after", type=int, default=0, help="admit_on_reuse: retrievals before the KV is kept; 0: the default")
            p.add_argument("--kv-share-group", default="", help="share one KV salt (and identical chunks' blobs) with this group's tenants")
        _client_options(p)
        p.set_defaults(run=_tenants, action=action)
    p = tenants.add_parser("list", help="every tenant in name order, one JSON line each, fetched a page at a time")
    p.add_argument("--usage", action="store_true", help="with each tenant's usage counts (slower)")
    p.add_argument("--page-size", type=int, default=0, help="tenants per call; 0: the server's default")
    _client_options(p)
    p.set_defaults(run=_tenants, action="list", tenant_id="")
    keys = admin_sub.add_parser("keys").add_subparsers(required=True, metavar="ACTION")
    p = keys.add_parser("create", help="a tenant key (an admin key without --tenant, a worker key with --worker); prints the secret once")
    p.add_argument("--tenant", default="")
    p.add_argument("--worker", action="store_true", help="a key for `tenantkv worker`: fetches only the chunk KV the router grants")
    p.add_argument("--rights", default="read,write", help="comma-separated: read, write")
    p.add_argument("--ttl-seconds", type=int, default=0, help="the key expires this long after creation; 0: never")
    _client_options(p)
    p.set_defaults(run=_keys_create)
    p = keys.add_parser("revoke")
    p.add_argument("key_id")
    _client_options(p)
    p.set_defaults(run=_keys_revoke)
    p = admin_sub.add_parser("compact", help="rewrite the store's files with live data only, so deleted data is gone from disk")
    _client_options(p)
    p.set_defaults(run=_compact)
    p = admin_sub.add_parser("backup", help="a consistent backup of the serving store, as NAME under the server's backup_root")
    p.add_argument("name")
    _client_options(p)
    p.set_defaults(run=_backup)

    restore = sub.add_parser("restore", help="lay out an empty data directory from a backup (checked against its manifest)")
    restore.add_argument("backup_dir", type=Path)
    restore.add_argument("data_dir", type=Path)
    restore.add_argument("--config", type=Path, help="the TOML file the server will start with (its dim must match)")
    restore.set_defaults(run=_restore)

    ingest = sub.add_parser("ingest", help="upsert a JSONL file of documents, resumable")
    ingest.add_argument("file", type=Path, help='one JSON object a line: {"id", "text" | "chunks" [, "vectors"], "metadata"}')
    ingest.add_argument("--tenant", default="", help="ingest for this tenant with an admin key")
    ingest.add_argument("--batch", type=int, default=32, help="documents per transaction")
    ingest.add_argument("--restart", action="store_true", help="ignore saved progress and start at the first line")
    _client_options(ingest)
    ingest.set_defaults(run=_ingest)

    bulk = sub.add_parser("bulk-ingest", help="ingest JSONL or Parquet documents on Ray Data: cut, embedded and KV-precomputed by Ray actors")
    bulk.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help='JSONL or Parquet files or directories; records {"id", "text", "metadata"?}')
    bulk.add_argument("--tenant", default="", help="ingest for this tenant with an admin key")
    bulk.add_argument("--ray-address", help="join this Ray cluster; default: a local Ray instance sized to the machine")
    bulk.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance; default: the machine's")
    bulk.add_argument("--batch", type=int, default=16, help="documents in one batch through each stage")
    bulk.add_argument("--upsert-batch", type=int, default=32, help="documents per Upsert transaction")
    bulk.add_argument("--chunk-actors", type=int, default=1)
    bulk.add_argument("--embed-actors", type=int, default=1)
    bulk.add_argument("--kv-actors", type=int, default=1)
    bulk.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "tenantkv", help="converted copies of GGUF models")
    _client_options(bulk)
    bulk.set_defaults(run=_bulk_ingest)

    ask = sub.add_parser("ask", help="retrieve and generate; streams the answer")
    ask.add_argument("question")
    ask.add_argument("--tenant", default="", help="ask as this tenant with an admin key")
    ask.add_argument("-k", type=int, default=0)
    ask.add_argument("--max-new-tokens", type=int, default=0)
    ask.add_argument("--mode", choices=["blend", "full_prefill", "full_reuse"], default="", help="default: the server's (blend)")
    ask.add_argument("--where", default=None, help=WHERE_HELP)
    _client_options(ask)
    ask.set_defaults(run=_ask)

    search = sub.add_parser("search", help="the chunks nearest a text, as JSON lines")
    search.add_argument("query")
    search.add_argument("--tenant", default="", help="search as this tenant with an admin key")
    search.add_argument("-k", type=int, default=5)
    search.add_argument("--where", default=None, help=WHERE_HELP)
    _client_options(search)
    search.set_defaults(run=_search)
    return parser


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=os.environ.get("TENANTKV_SERVER", DEFAULT_SERVER))
    parser.add_argument("--api-key-file", type=Path, help="file holding the key (default: TENANTKV_API_KEY)")
    parser.add_argument("--ca", type=Path, default=os.environ.get("TENANTKV_CA") or None, help="CA bundle of a server on TLS (default: TENANTKV_CA)")


def _api_key(args, kind: str = "API") -> str:
    """The key in --api-key-file, else TENANTKV_API_KEY; SystemExit if neither holds one."""
    key = args.api_key_file.read_text().strip() if args.api_key_file else os.environ.get("TENANTKV_API_KEY", "")
    if not key:
        raise SystemExit(f"no {kind} key: pass --api-key-file or set TENANTKV_API_KEY")
    return key


def _client(args) -> Client:
    return Client(args.server, _api_key(args), tls=_tls(args))


def _tls(args) -> ClientTLS | None:
    return ClientTLS(Path(args.ca)) if args.ca else None


@contextlib.contextmanager
def _tenant_client(args, rights: str) -> Iterator[Client]:
    """The client to use for a data-plane call: the given key, or a temporary key for --tenant."""
    with _client(args) as client:
        if not args.tenant:
            yield client
            return
        minted = client.create_api_key(args.tenant, rights.split(","), ttl_s=TEMPORARY_KEY_TTL_S)  # expires even if we die
        try:
            with Client(args.server, minted.api_key, tls=_tls(args)) as tenant_client:
                yield tenant_client
        finally:
            client.revoke_api_key(minted.key_id)


def _serve(args) -> int:
    from server.app import serve  # imports torch and the models only for this command
    from server.interceptor import RequestContextFilter

    handler = logging.StreamHandler()
    handler.addFilter(RequestContextFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s %(tenant)s] %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])

    config = load_config(args.config)
    if args.workers is not None:
        config = dataclasses.replace(config, workers=args.workers)
    uvloop.run(serve(config))
    _exit_now()


def _worker(args) -> int:
    from client.tls import ServerTLS
    from worker.config import WorkerConfig  # imports torch and the models only for this command
    from worker.engine import EngineConfig
    from worker.scheduler import SchedulerConfig
    from worker.serve import WorkerServiceConfig, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    key = _api_key(args, "worker")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SystemExit("--tls-cert and --tls-key go together")
    config = WorkerServiceConfig(
        listen=args.listen,
        store=args.store,
        api_key=key,
        models=WorkerConfig(cache_dir=args.cache_dir, device=args.device),
        engine=EngineConfig(
            kv_codec=args.kv_codec,
            cache_bytes=args.kv_cache_bytes,
            scheduler=SchedulerConfig(args.max_batch_size, args.step_tokens, args.ingest_batch_tokens, not args.no_cuda_graphs),
        ),
        tls=ServerTLS(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None,
        store_tls=ClientTLS(args.store_ca) if args.store_ca else None,
        insecure=args.insecure,
    )
    uvloop.run(serve(config))
    _exit_now()


def _exit_now() -> None:
    """Exit 0 without the interpreter's teardown, once a server has stopped cleanly: everything
    durable is closed by then, and tearing down torch, its threads and the loaded models took
    seconds more on a busy machine, past what a SIGTERM may take."""
    logging.shutdown()
    sys.stdout.flush()
    os._exit(0)


def _tenants(args) -> int:
    with _client(args) as client:
        if args.action in ("create", "update"):
            settings = tenant_admin_pb2.TenantSettings(
                max_chunks=args.max_chunks,
                max_kv_bytes=args.max_kv_bytes,
                requests_per_second=args.requests_per_second,
                kv_codec=args.kv_codec,
                kv_policy=args.kv_policy,
                kv_admit_after=args.kv_admit_after,
                kv_share_group=args.kv_share_group,
            )
            change = client.create_tenant if args.action == "create" else client.update_tenant
            _print(change(args.tenant_id, settings))
        elif args.action == "get":
            _print(client.get_tenant(args.tenant_id))
        elif args.action == "delete":
            print(json.dumps({"deleted_chunks": client.delete_tenant(args.tenant_id)}))
        else:
            for tenant in client.list_tenants(with_usage=args.usage, page_size=args.page_size):
                _print(tenant)
    return 0


def _keys_create(args) -> int:
    with _client(args) as client:
        _print(client.create_api_key(args.tenant, [r for r in args.rights.split(",") if r], args.ttl_seconds, worker=args.worker))
    return 0


def _keys_revoke(args) -> int:
    with _client(args) as client:
        client.revoke_api_key(args.key_id)
    return 0


def _backup(args) -> int:
    with _client(args) as client:
        _print(client.backup_store(args.name))
    return 0


def _restore(args) -> int:
    from server.backup import restore_data_dir
    from store.errors import TenantKVError

    config = dataclasses.replace(load_config(args.config), data_dir=args.data_dir)
    try:
        manifest = restore_data_dir(args.backup_dir, config)
    except TenantKVError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"data_dir": str(args.data_dir), "tenants": manifest.tenants, "chunks": manifest.chunks, "bytes": manifest.total_bytes}))
    return 0


def _compact(args) -> int:
    with _client(args) as client:
        _print(client.compact_store())
    return 0


def _ingest(args) -> int:
    progress_path = args.file.with_name(args.file.name + ".progress")
    done = 0 if args.restart or not progress_path.exists() else int(progress_path.read_text() or 0)
    lines = args.file.read_text().splitlines()
    with _tenant_client(args, "write") as client, tqdm(total=len(lines), initial=done, unit="doc", desc="ingest") as bar:
        for start in range(done, len(lines), args.batch):
            batch = [_document(line, start + i + 1) for i, line in enumerate(lines[start : start + args.batch])]
            client.upsert([batch])
            progress_path.write_text(str(start + len(batch)))
            bar.update(len(batch))
    progress_path.unlink(missing_ok=True)
    return 0


def _document(line: str, line_number: int) -> DocumentText:
    try:
        record = json.loads(line)
        return DocumentText(
            external_id=str(record["id"]),
            text=record.get("text", ""),
            chunks=record.get("chunks", ()),
            vectors=record.get("vectors"),
            metadata=record.get("metadata", {}),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"line {line_number}: not a document ({exc})") from exc


def _bulk_ingest(args) -> int:
    from bulk.job import BulkConfig, Layout, bulk_ingest  # imports Ray only for this command
    from bulk.target import ServerTarget
    from worker.config import WorkerConfig

    with _client(args) as client:
        if args.tenant:
            minted = client.create_api_key(args.tenant, ["read", "write"], ttl_s=TEMPORARY_KEY_TTL_S)  # expires even if we die
            key = minted.api_key
        else:
            key = _api_key(args)
        config = BulkConfig(
            inputs=tuple(args.inputs),
            target=ServerTarget(args.server, key, Path(args.ca) if args.ca else None),
            models=WorkerConfig(cache_dir=args.cache_dir),
            layout=Layout(args.chunk_actors, args.embed_actors, args.kv_actors, args.batch),
            documents_per_upsert=args.upsert_batch,
            ray_address=args.ray_address,
            num_cpus=args.num_cpus,
        )
        try:
            summary = bulk_ingest(config)
        finally:
            if args.tenant:
                client.revoke_api_key(minted.key_id)
    print(summary.line(), file=sys.stderr)
    print(json.dumps(dataclasses.asdict(summary) | {"chunks_per_s": round(summary.chunks_per_s, 3)}))
    return 1 if summary.failures else 0


def _ask(args) -> int:
    with _tenant_client(args, "read") as client:
        for event in client.ask(args.question, k=args.k, max_new_tokens=args.max_new_tokens, mode=args.mode, where=args.where):
            kind = event.WhichOneof("event")
            if kind == "chunks":
                sources = ", ".join(f"{h.external_id}#{h.chunk_index}" for h in event.chunks.hits)
                print(f"[chunks: {sources}]", file=sys.stderr)
            elif kind == "token":
                print(event.token.text, end="", flush=True)
            else:
                s = event.stats
                print(
                    f"\n[retrieval {s.retrieval_ms:.0f} ms, first token {s.time_to_first_token_ms:.0f} ms, "
                    f"{s.tokens_generated} tokens at {s.tokens_per_s:.1f}/s]",
                    file=sys.stderr,
                )
    return 0


def _search(args) -> int:
    with _tenant_client(args, "read") as client:
        for hit in client.search(args.query, k=args.k, where=args.where).hits:
            _print(hit)
    return 0


def _print(message) -> None:
    print(json.dumps(json_format.MessageToDict(message), indent=None))


if __name__ == "__main__":
    sys.exit(main())
