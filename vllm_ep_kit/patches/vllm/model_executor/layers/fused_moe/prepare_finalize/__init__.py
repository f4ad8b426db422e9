"""Mirrors vLLM's package path; one module per patched upstream module."""
