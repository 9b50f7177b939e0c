"""Runnable examples of proxjax."""
