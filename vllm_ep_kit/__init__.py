"""vllm-ep-kit: tests, hotfixes and tools for vLLM's expert-parallel communication."""

__version__ = "0.1.0"
