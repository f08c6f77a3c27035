"""The Python client for tenantkv's public gRPC API, used by the CLI, workers, jobs and tests.

May import `protos` only, so anything can use it without importing the server.
"""
