"""Marketplace data: typed tables, a synthetic generator, real-data loaders, anonymization, examples, shards.

Import from the submodules (`common.data.schema`, `common.data.examples`, ...); this package keeps no state.
"""
