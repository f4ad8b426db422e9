"""Drivers only the tests use: vLLM's and FlashInfer's EP pieces run as the tests run them.

The MoE layer matrix, the prepare/finalize steps, FlashInfer's kernels driven
directly, the managers' round trips, exact CPU stand-ins for the kernels and the
stable-ABI check of vLLM's compiled extensions.  They live here, not in the wheel,
as vLLM keeps its ``modular_kernel_tools`` under its tests.
"""
