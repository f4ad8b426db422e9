"""Buildkite test areas (vLLM's ``.buildkite/test_areas/*.yaml`` format) and the CI linter."""
