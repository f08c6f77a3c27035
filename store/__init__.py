"""Durable state: LMDB for tenants, keys, chunks and vectors; append-only segment files for KV blobs.

Owns the error hierarchy (`store.errors`) that every layer above raises and the server maps to
gRPC status codes. Imports nothing of ours: KV blobs are opaque bytes here.
"""
