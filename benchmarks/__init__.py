"""Benchmarks of proxjax, each a script printing a table."""
