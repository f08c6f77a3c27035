"""gRPC services, auth, configuration and CLI: wires store, index and worker together.

May import `worker`, `index`, `store`, `kvcodec`, `client` and `protos`.
"""
