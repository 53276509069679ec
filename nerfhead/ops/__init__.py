"""Kernels' Python faces and their pure-PyTorch references.

Each op family has one module: the public function (shapes in its docstring), a private
``autograd.Function`` calling ``nerfhead._C`` and, beside it, ``<name>_reference`` that
computes the same function in PyTorch on any device. ``backend.resolve_backend`` picks.
Nothing here imports the compiled extension at import time.
"""
