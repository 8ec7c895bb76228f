"""Fixtures for the tests, the demo and the benches: the tiny LLaVA-1.5, the synthetic risk corpus, the demo jobs.

The library proper never imports this package (`tests/house/test_import_graph.py`); the CLI and the tests do.
"""
