"""Chunks uploaded with precomputed KV (Ingest.Upsert): their blobs assembled from KVPiece
messages, and the checks every uploaded blob passes before anything of its batch is stored.

An uploaded blob is the uploader's claim. The cheap checks run on every blob: its header decodes
and its payload matches its checksum, its codec is the tenant's, it names the server's model
fingerprint, and its shape is the model's (layers, KV heads, head dim) for the chunk's token ids.
Whether its values are the model's is checked by recomputing a random sample
(`upload_recompute_fraction`) of a batch's uploads and comparing them after decoding (a sampled
blob whose payload does not parse is refused too). Each failure is InvalidArgument naming the
chunk (`documents[i].chunks[j]`) and field.
"""

import secrets
from dataclasses import dataclass

import numpy as np
import torch

import kvcodec
from client.api import KV_PIECE_BYTES
from protos.tenantkv.v1 import ingest_pb2
from server.convert import ChunkClaim
from server.offload import Offload
from server.router import Router
from store.errors import InvalidArgument

# Largest relative L2 difference, keys and values apart, between an uploaded blob and the server's
# recompute, both decoded. SmolLM2 chunk KV computed in bf16 against float32 differs by 0.017
# (fp16), 0.018 (int8), 0.065 (kivi4), 0.14 (kivi2), 0.086 (ecq) after encoding, batched against
# single float32 by at most 8e-4; the bounds are about twice the bf16 figures, so a GPU uploader
# passes, and a blob scaled by 5% (0.05), another chunk's KV (> 0.5) or a zeroed layer (> 0.16) in
# fp16 does not.
RECOMPUTE_TOLERANCE = {"fp16": 0.03, "int8": 0.04, "kivi4": 0.12, "kivi2": 0.28, "ecq": 0.17}
PROBE_TOKENS = np.zeros(1, dtype=np.int32)  # any one token: its KV's shape tells the model's


@dataclass(frozen=True, slots=True)
class ModelKVShape:
    """What the model's chunk KV looks like: [layers, 2, kv_heads, tokens + extra_tokens, head_dim]."""

    layers: int
    kv_heads: int
    head_dim: int
    extra_tokens: int  # the separator the worker appends to every chunk's own tokens

    def expected(self, tokens: int) -> tuple[int, ...]:
        return (self.layers, 2, self.kv_heads, tokens + self.extra_tokens, self.head_dim)


async def model_kv_shape(router: Router) -> ModelKVShape:
    """The shape of the workers' chunk KV, read from one token's KV computed by them (so it holds for
    remote workers whose model the server never loads)."""
    (blob,) = await router.precompute_kv([PROBE_TOKENS], "fp16")
    layers, _, kv_heads, tokens, head_dim = kvcodec.blob_info(blob).shape
    return ModelKVShape(layers, kv_heads, head_dim, tokens - len(PROBE_TOKENS))


class PendingBlobs:
    """The blobs one batch announced (ChunkClaim.kv_size), filled piece by piece in order of offset."""

    def __init__(self, claims: list[list[ChunkClaim]], external_ids: list[str], max_bytes: int) -> None:
        self._claims = {
            (external_id, j): (i, claim) for i, (external_id, chunks) in enumerate(zip(external_ids, claims))
            for j, claim in enumerate(chunks) if claim.kv_size
        }
        total = sum(claim.kv_size for _, claim in self._claims.values())
        if total > max_bytes:
            raise InvalidArgument(f"documents: the batch announces {total} bytes of KV, more than {max_bytes}")
        self._pieces: dict[tuple[str, int], list[bytes]] = {key: [] for key in self._claims}  # joined once, at the end
        self._received = dict.fromkeys(self._claims, 0)
        self._remaining = total

    @property
    def complete(self) -> bool:
        return self._remaining == 0

    def add(self, piece: ingest_pb2.KVPiece) -> None:
        """One piece; InvalidArgument if it names no announced blob, arrives out of order or overflows."""
        key = (piece.external_id, piece.chunk)
        if key not in self._claims:
            raise InvalidArgument(f"kv_pieces: no blob announced for external_id {piece.external_id!r} chunk {piece.chunk}")
        claim = self._claims[key][1]
        received = self._received[key]
        data = piece.data  # each read of a bytes field copies it
        if len(data) > KV_PIECE_BYTES:
            raise InvalidArgument(f"{claim.field}.kv: a piece of {len(data)} bytes, more than {KV_PIECE_BYTES}")
        if piece.offset != received:
            raise InvalidArgument(f"{claim.field}.kv: piece at offset {piece.offset}, expected {received} (pieces arrive in order)")
        if received + len(data) > claim.kv_size:
            raise InvalidArgument(f"{claim.field}.kv: pieces overflow the announced kv_size of {claim.kv_size} bytes")
        self._pieces[key].append(data)
        self._received[key] = received + len(data)
        self._remaining -= len(data)

    def missing(self) -> str:
        """The first incomplete blob, described ("" when complete)."""
        for key, received in self._received.items():
            claim = self._claims[key][1]
            if received < claim.kv_size:
                return f"{claim.field}.kv: {received} of the announced {claim.kv_size} bytes arrived"
        return ""

    def blobs(self) -> dict[tuple[int, int], bytes]:
        """Each complete blob by (document index, chunk index)."""
        return {(self._claims[key][0], key[1]): b"".join(pieces) for key, pieces in self._pieces.items()}


def check_blobs(
    claims: list[list[ChunkClaim]], blobs: dict[tuple[int, int], bytes], shape: ModelKVShape, fingerprint: str, codec: str
) -> None:
    """Every uploaded blob's header decodes and its payload matches its checksum, in the tenant's
    `codec`, under `fingerprint`, in the model's shape for its chunk's token ids. The payload is not parsed
    here (that costs more than storing it): the sampled recompute parses the blobs it draws, and a
    stored blob that does not parse is recomputed when read, like a miss."""
    for (i, j), blob in blobs.items():
        claim = claims[i][j]
        try:
            info = kvcodec.blob_info(blob)
        except kvcodec.CorruptBlobError as exc:
            raise InvalidArgument(f"{claim.field}.kv: does not decode ({exc})") from exc
        if info.codec != codec:
            raise InvalidArgument(f"{claim.field}.kv: encoded in {info.codec}, the tenant's codec is {codec}")
        if info.fingerprint != fingerprint:
            raise InvalidArgument(f"{claim.field}.kv: computed with model fingerprint {info.fingerprint!r}, the server's is {fingerprint!r}")
        expected = shape.expected(len(claim.token_ids))
        if info.shape != expected:
            raise InvalidArgument(
                f"{claim.field}.kv: shape {list(info.shape)}, the model's for {len(claim.token_ids)} token ids is {list(expected)}"
            )


def check_token_ids(claims: list[list[ChunkClaim]], cut_token_ids: list[list[np.ndarray]]) -> None:
    """Token ids sent with a chunk equal what the server's tokenizer makes of its text."""
    for claimed, computed in zip(claims, cut_token_ids):
        for claim, ids in zip(claimed, computed):
            if claim.token_ids is not None and not np.array_equal(claim.token_ids, ids):
                raise InvalidArgument(f"{claim.field}.token_ids: not what the server's tokenizer produces for its text")


def sample(count: int, fraction: float) -> list[int]:
    """Indexes among `count` uploads to recompute, each drawn with probability `fraction` from a
    source the uploader cannot predict."""
    draw = secrets.SystemRandom()
    return [k for k in range(count) if draw.random() < fraction]


async def verify_sample(router: Router, offload: Offload, uploads: list[tuple[str, np.ndarray, bytes]], fraction: float) -> None:
    """Recompute a sample (each with probability `fraction`) of (field, token ids, blob) uploads, batched
    by each blob's codec, and refuse one whose decoded KV differs from the recompute beyond RECOMPUTE_TOLERANCE."""
    by_codec: dict[str, list[tuple[str, np.ndarray, bytes]]] = {}
    for k in sample(len(uploads), fraction):
        by_codec.setdefault(kvcodec.codec_of(uploads[k][2]), []).append(uploads[k])
    for codec, chosen in by_codec.items():
        recomputed = await router.precompute_kv([token_ids for _, token_ids, _ in chosen], codec)
        for (field, _, blob), reference in zip(chosen, recomputed):
            try:
                difference = await offload.io(relative_difference, blob, reference)
            except kvcodec.CorruptBlobError as exc:
                raise InvalidArgument(f"{field}.kv: does not decode ({exc})") from exc
            if not difference <= RECOMPUTE_TOLERANCE[codec]:  # NaN (all-zero KV) fails too
                raise InvalidArgument(
                    f"{field}.kv: differs from the server's recompute by {difference:.3g} (relative), beyond {codec}'s {RECOMPUTE_TOLERANCE[codec]}"
                )


def relative_difference(blob: bytes, reference: bytes) -> float:
    """The larger of the keys' and the values' relative L2 difference between two decoded blobs."""
    got, want = kvcodec.decode(blob).float(), kvcodec.decode(reference).float()
    return max(float(torch.linalg.vector_norm(got[:, k] - want[:, k]) / torch.linalg.vector_norm(want[:, k])) for k in (0, 1))
