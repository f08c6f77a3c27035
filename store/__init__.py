"""Durable state: LMDB for tenants, keys, documents, chunks and vectors; append-only segment files for KV blobs.

Callers hold one `store.store.Store`; behind it each job has its own module (listed in
`store.store`'s docstring), plus the record types (`store.records`), the configuration
(`store.config`) and the error hierarchy (`store.errors`) that every layer above raises and the
server maps to gRPC status codes. Imports nothing of ours outside store/: KV blobs are opaque bytes here.
"""
