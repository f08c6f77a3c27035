"""The `tenantkv` command: serve, admin, ingest and ask.

Client commands find the server in --server or TENANTKV_SERVER and their key in --api-key-file or
TENANTKV_API_KEY. With --tenant and an admin key, ingest and ask mint a short-lived key for that
tenant and revoke it afterwards, so the request's tenant still comes from its key.
"""

import argparse
import contextlib
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
from server.config import load_config

DEFAULT_SERVER = "127.0.0.1:50051"
TEMPORARY_KEY_TTL_S = 24 * 3600  # keys minted for one --tenant command; revoked when it ends


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
    serve.set_defaults(run=_serve)

    admin = sub.add_parser("admin", help="tenants and API keys (needs an admin key)")
    admin_sub = admin.add_subparsers(required=True, metavar="OBJECT")
    tenants = admin_sub.add_parser("tenants").add_subparsers(required=True, metavar="ACTION")
    for action in ("create", "update", "get", "delete"):
        p = tenants.add_parser(action)
        p.add_argument("tenant_id")
        if action in ("create", "update"):
            p.add_argument("--max-chunks", type=int, default=0, help="0: unlimited")
            p.add_argument("--max-kv-bytes", type=int, default=0, help="0: unlimited")
            p.add_argument("--requests-per-second", type=float, default=0.0, help="0: unlimited")
            p.add_argument("--kv-codec", default="", help="fp16, int8, kivi4, kivi2, ecq; default: the server's")
        _client_options(p)
        p.set_defaults(run=_tenants, action=action)
    p = tenants.add_parser("list", help="every tenant in name order, one JSON line each, fetched a page at a time")
    p.add_argument("--usage", action="store_true", help="with each tenant's usage counts (slower)")
    p.add_argument("--page-size", type=int, default=0, help="tenants per call; 0: the server's default")
    _client_options(p)
    p.set_defaults(run=_tenants, action="list", tenant_id="")
    keys = admin_sub.add_parser("keys").add_subparsers(required=True, metavar="ACTION")
    p = keys.add_parser("create", help="a tenant key (or an admin key without --tenant); prints the secret once")
    p.add_argument("--tenant", default="")
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

    ingest = sub.add_parser("ingest", help="upsert a JSONL file of documents, resumable")
    ingest.add_argument("file", type=Path, help='one JSON object a line: {"id", "text" | "chunks" [, "vectors"], "metadata"}')
    ingest.add_argument("--tenant", default="", help="ingest for this tenant with an admin key")
    ingest.add_argument("--batch", type=int, default=32, help="documents per transaction")
    ingest.add_argument("--restart", action="store_true", help="ignore saved progress and start at the first line")
    _client_options(ingest)
    ingest.set_defaults(run=_ingest)

    ask = sub.add_parser("ask", help="retrieve and generate; streams the answer")
    ask.add_argument("question")
    ask.add_argument("--tenant", default="", help="ask as this tenant with an admin key")
    ask.add_argument("-k", type=int, default=0)
    ask.add_argument("--max-new-tokens", type=int, default=0)
    ask.add_argument("--mode", choices=["blend", "full_prefill", "full_reuse"], default="", help="default: the server's (blend)")
    _client_options(ask)
    ask.set_defaults(run=_ask)
    return parser


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=os.environ.get("TENANTKV_SERVER", DEFAULT_SERVER))
    parser.add_argument("--api-key-file", type=Path, help="file holding the key (default: TENANTKV_API_KEY)")


def _client(args) -> Client:
    if args.api_key_file:
        key = args.api_key_file.read_text().strip()
    else:
        key = os.environ.get("TENANTKV_API_KEY", "")
    if not key:
        raise SystemExit("no API key: pass --api-key-file or set TENANTKV_API_KEY")
    return Client(args.server, key)


@contextlib.contextmanager
def _tenant_client(args, rights: str) -> Iterator[Client]:
    """The client to use for a data-plane call: the given key, or a temporary key for --tenant."""
    with _client(args) as client:
        if not args.tenant:
            yield client
            return
        minted = client.create_api_key(args.tenant, rights.split(","), ttl_s=TEMPORARY_KEY_TTL_S)  # expires even if we die
        try:
            with Client(args.server, minted.api_key) as tenant_client:
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

    uvloop.run(serve(load_config(args.config)))
    return 0


def _tenants(args) -> int:
    with _client(args) as client:
        if args.action in ("create", "update"):
            settings = tenant_admin_pb2.TenantSettings(
                max_chunks=args.max_chunks,
                max_kv_bytes=args.max_kv_bytes,
                requests_per_second=args.requests_per_second,
                kv_codec=args.kv_codec,
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
        _print(client.create_api_key(args.tenant, [r for r in args.rights.split(",") if r], args.ttl_seconds))
    return 0


def _keys_revoke(args) -> int:
    with _client(args) as client:
        client.revoke_api_key(args.key_id)
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


def _ask(args) -> int:
    with _tenant_client(args, "read") as client:
        for event in client.ask(args.question, k=args.k, max_new_tokens=args.max_new_tokens, mode=args.mode):
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


def _print(message) -> None:
    print(json.dumps(json_format.MessageToDict(message), indent=None))


if __name__ == "__main__":
    sys.exit(main())
