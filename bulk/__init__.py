"""Bulk ingestion on Ray Data (`tenantkv bulk-ingest`): read, chunk, embed and precompute KV on
Ray actors, and write through `Ingest.Upsert` with the chunks' token ids, vectors and KV blobs.

May import `client`, `worker`, `store`'s errors, and Ray (the optional `tenantkv[ray]` extra);
the server never imports this package.
"""
