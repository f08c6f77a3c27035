"""Server configuration: one typed dataclass, built once at the edge from a TOML file and TENANTKV_* variables."""

import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Mapping

from client.tls import ClientTLS, ServerTLS
from store.config import StoreConfig
from store.errors import InvalidArgument
from store.records import KV_POLICIES
from worker.config import WorkerConfig
from worker.engine import EngineConfig
from worker.scheduler import SchedulerConfig

ENV_PREFIX = "TENANTKV_"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    data_dir: Path = Path("tenantkv-data")
    host: str = "127.0.0.1"
    port: int = 50051
    # gRPC messages both ways; KV travels in streamed pieces well below it.
    max_message_bytes: int = 4 << 20
    dim: int = 384
    default_k: int = 5
    max_k: int = 1000
    rag_default_k: int = 3
    rag_max_k: int = 16
    default_max_new_tokens: int = 64
    max_new_tokens_limit: int = 512
    max_documents_per_batch: int = 1000
    max_text_bytes: int = 1 << 20
    llm_path: Path | None = None
    embedder_path: Path | None = None
    cache_dir: Path = Path.home() / ".cache" / "tenantkv"
    chunk_tokens: int = 256
    device: str = "auto"  # for the generation model: "cpu", "cuda[:N]", or "auto" (the GPU where there is one)
    precompute_kv: bool = True  # the default KV policy when `kv_policy` is empty: true eager, false none
    kv_policy: str = ""  # tenants' default KV policy (eager, lazy, admit_on_reuse, none); "": from precompute_kv
    kv_admit_after: int = 2  # admit_on_reuse's default: retrievals within the window before a chunk's KV is kept
    kv_admit_window_s: int = 3600
    kv_codec: str = "fp16"
    max_upload_kv_bytes: int = 256 << 20  # uploaded KV one Upsert batch may announce (held in memory until checked)
    upload_recompute_fraction: float = 0.01  # uploaded chunks the server recomputes and compares (server/uploads.py)
    kv_cache_bytes: int = 1 << 30  # decoded chunk KV kept in worker memory
    # The in-process worker's scheduler (worker/scheduler.py): answers batched at once, tokens of
    # model work a step, padded tokens of chunk KV computed in one pass.
    max_batch_size: int = 16
    step_tokens: int = 512
    ingest_batch_tokens: int = 4096
    cuda_graphs: bool = True  # on a GPU, replay the batched decode step from CUDA graphs (worker/decode_graphs.py)
    admin_key_file: Path | None = None  # defaults to <data_dir>/admin.key
    metrics_port: int = -1  # Prometheus /metrics on host:port; 0: any free port; -1: none
    warm_up: bool = True  # run the index scan, embedder and both prefills once before SERVING (server/warmup.py)
    # Inference workers (`tenantkv worker`) as comma-separated host:port; empty: one worker in this
    # process, and then the server loads the generation model itself.
    workers: str = ""
    routing: str = "locality"  # how the router picks a worker: locality, least_loaded or round_robin
    # TLS: the server's certificate and key (PEM); with `tls_client_ca`, clients must present a
    # certificate it signed. Without a certificate, plaintext, refused off loopback unless `insecure`.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    insecure: bool = False
    # TLS to the workers: the CA their certificates chain to, and the router's client certificate
    # for workers that require one (mutual TLS).
    worker_tls_ca: Path | None = None
    worker_tls_cert: Path | None = None
    worker_tls_key: Path | None = None
    backup_root: Path | None = None  # TenantAdmin.BackupStore writes only under it; None: backups off
    backup_max_mb_per_s: int = 64  # a backup's copy rate, so Search keeps its latency; 0: unpaced

    def __post_init__(self) -> None:
        if not 0.0 <= self.upload_recompute_fraction <= 1.0:
            raise InvalidArgument(f"upload_recompute_fraction: a fraction in [0, 1], got {self.upload_recompute_fraction}")

    @property
    def admin_key_path(self) -> Path:
        return self.admin_key_file or self.data_dir / "admin.key"

    @property
    def default_kv_policy(self) -> str:
        """The KV policy of a tenant whose settings name none."""
        policy = self.kv_policy or ("eager" if self.precompute_kv else "none")
        if policy not in KV_POLICIES:
            raise InvalidArgument(f"kv_policy: unknown {policy!r}; known: {list(KV_POLICIES)} or empty for precompute_kv's")
        return policy

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def worker_addresses(self) -> list[str]:
        return [address.strip() for address in self.workers.split(",") if address.strip()]

    def server_tls(self) -> ServerTLS | None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidArgument("tls_cert, tls_key: give both or neither")
        return ServerTLS(self.tls_cert, self.tls_key, self.tls_client_ca) if self.tls_cert else None

    def worker_tls(self) -> ClientTLS | None:
        return ClientTLS(self.worker_tls_ca, self.worker_tls_cert, self.worker_tls_key) if self.worker_tls_ca else None

    def engine_config(self) -> EngineConfig:
        scheduler = SchedulerConfig(self.max_batch_size, self.step_tokens, self.ingest_batch_tokens, self.cuda_graphs)
        return EngineConfig(kv_codec=self.kv_codec, cache_bytes=self.kv_cache_bytes, scheduler=scheduler)

    def store_config(self) -> StoreConfig:
        return StoreConfig(path=self.data_dir / "store", dim=self.dim)

    def worker_config(self) -> WorkerConfig:
        return WorkerConfig(
            llm_path=self.llm_path,
            embedder_path=self.embedder_path,
            cache_dir=self.cache_dir,
            chunk_tokens=self.chunk_tokens,
            device=self.device,
        )


def load_config(toml_path: Path | None = None, environ: Mapping[str, str] | None = None) -> ServerConfig:
    """Defaults, overridden by the TOML file's keys, overridden by TENANTKV_<KEY> variables."""
    values: dict[str, object] = {}
    if toml_path is not None:
        values.update(tomllib.loads(Path(toml_path).read_text()))
    env = os.environ if environ is None else environ
    for f in fields(ServerConfig):
        name = ENV_PREFIX + f.name.upper()
        if name in env:
            values[f.name] = env[name]
    return replace(ServerConfig(), **{name: _coerce(name, value) for name, value in values.items()})


def _coerce(name: str, value: object) -> object:
    types = {f.name: f.type for f in fields(ServerConfig)}
    if name not in types:
        raise InvalidArgument(f"unknown configuration key {name!r}")
    kind = types[name]
    try:
        if kind is bool:
            return _boolean(value)
        if kind is int:
            return int(value)
        if kind is float:
            return float(value)
        if kind is str:
            return str(value)
        if value == "" and kind != Path:
            return None  # an optional path left empty
        return Path(str(value)).expanduser()
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"configuration key {name!r}: {exc}") from exc


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"expected a boolean, got {value!r}")
    return text in ("true", "1", "yes")
