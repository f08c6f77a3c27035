"""gRPC services, auth, configuration, CLI and client: wires store, index and worker together.

May import `worker`, `index`, `store`, `kvcodec` and `protos`.
"""
