"""A remote worker's way to the store: `KVCache.Fetch` with its worker key and the router's capability."""

from client.api import Client
from worker.node import KVFetcher


class StoreKV:
    def __init__(self, client: Client) -> None:
        self._client = client

    def fetcher(self, capability: str) -> KVFetcher:
        """Fetches the chunks `capability` names; the store refuses any other (PERMISSION_DENIED)."""

        def fetch(chunk_ids: list[int]) -> dict[int, bytes]:
            return {chunk_id: blob for chunk_id, (_, blob) in self._client.fetch_kv(chunk_ids, capability).items()}

        return fetch
