"""The runtime every other fastflow module shares.

- :mod:`.loader`: what this installation can run (the compiled extension, Triton, CUDA), probed once.
- :mod:`.config`: every ``FASTFLOW_*`` environment switch, parsed in one place.
- :mod:`.dispatch`: the backend choice, the compute dtype and the matmul precision.
- :mod:`.ops`: the fake (meta) implementations of the compiled ``torch.ops.fastflow.*`` operators.
- :mod:`.validate`: argument checks whose errors name the argument.
- :mod:`.nvtx`: NVTX ranges around the public operations.
- :mod:`.progress`: the tqdm progress bar of long loops.
- :mod:`.types`: the type aliases of the public signatures (``Time``, ``Shape``, ``DeviceLike``, ``LogWeight``).

Nothing here is public API; the names of ``fastflow/__init__.py`` are.
"""
