"""Tenant-aware vector indexes behind one contract (`TenantIndex`): the Curator-style tree and its baselines.

Imports nothing of ours. Wrong dtype or shape raises TypeError/ValueError naming the argument.
"""
