"""End-to-end accuracy runs against a served model (GPU CI scripts and their CPU tests)."""
