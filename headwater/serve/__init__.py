"""Serving layer: storage tiers, the query layer and the Ray Serve app.

This package fills in with the storage-tier and serving work; the engine does not depend on it.
"""
