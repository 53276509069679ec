"""Kernels' Python faces and their pure-PyTorch references.

Each op family has one module: the public function (shapes in its docstring), a private
``autograd.Function`` calling the operators of ``nerfhead._C`` (``torch.ops.nerfhead.*``:
one kernel source run on CUDA tensors, backend ``cuda``, and on CPU tensors, backend
``cpu``) and, beside it, ``<name>_reference`` that computes the same function in PyTorch on
any device (backend ``torch``, the specification). ``backend.resolve_backend`` picks.
Nothing here imports the compiled extension at import time.
"""
