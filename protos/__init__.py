"""The API contract: tenantkv/v1/*.proto and the Python stubs generated from them.

Regenerate with `make protos` (scripts/gen_protos.py). Imports nothing of ours.
"""
