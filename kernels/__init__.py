"""Triton kernels of fastflow (installed as ``fastflow.kernels``): @triton.jit functions only.

No allocation, no dispatch, no torch API beyond pointers: launchers live in ``fastflow._field_triton``.
"""
