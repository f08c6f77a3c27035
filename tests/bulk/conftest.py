"""Fixtures for the bulk job: one local Ray instance and one server a module (Ray starts slowly),
tenants with keys, and small document sets written as JSONL and Parquet."""

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from bulk.target import ServerTarget
from client.api import Client
from server.app import ServerThread
from server.config import ServerConfig

JSONL_DOCUMENTS = [
    {"id": "paris", "text": "Paris is the capital and largest city of France, on the river Seine.", "metadata": {"country": "France"}},
    {"id": "loire", "text": "The Loire is the longest river in France. It flows into the Atlantic Ocean near Nantes."},
    {
        "id": "counting",  # about 300 tokens: two chunks of at most 256
        "text": " ".join(f"Sentence {i} of this long note names the number {i * 7} and the colour {c}." for i, c in enumerate(["red", "blue", "green", "amber"] * 4)),
        "metadata": {"kind": "long"},
    },
]
PARQUET_DOCUMENTS = [
    {"id": "lyon", "text": "Lyon lies where the Rhone and the Saone meet.", "metadata": {"country": "France", "rank": 3}},
    {"id": "rhine", "text": "The Rhine rises in the Swiss Alps and flows to the North Sea.", "metadata": {"country": "Switzerland", "rank": 1}},
]


@dataclass(frozen=True)
class BulkServer:
    thread: ServerThread
    config: ServerConfig
    admin: Client

    @property
    def runtime(self):
        return self.thread.server.runtime

    def tenant(self, tenant_id: str) -> ServerTarget:
        """A new tenant, and a read-write key for it as the job's target."""
        self.admin.create_tenant(tenant_id)
        return ServerTarget(self.thread.address, self.admin.create_api_key(tenant_id).api_key)


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def bulk_server(tmp_path_factory, model_cache_dir: Path, models):
    config = ServerConfig(data_dir=tmp_path_factory.mktemp("bulk") / "data", port=0, cache_dir=model_cache_dir, warm_up=False)
    with ServerThread(config, models) as thread, Client(thread.address, config.admin_key_path.read_text().strip()) as admin:
        yield BulkServer(thread, config, admin)


def write_inputs(folder: Path) -> list[Path]:
    """The JSONL file and a directory holding the Parquet file (metadata as a struct column)."""
    folder.mkdir(parents=True, exist_ok=True)
    jsonl = folder / "documents.jsonl"
    jsonl.write_text("".join(json.dumps(d) + "\n" for d in JSONL_DOCUMENTS))
    (folder / "parquet").mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(PARQUET_DOCUMENTS), folder / "parquet" / "part-0.parquet")
    return [jsonl, folder / "parquet"]
