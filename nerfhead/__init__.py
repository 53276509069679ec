"""nerfhead: audio-driven talking-head NeRF (preprocess, train, render, evaluate).

Importing this package is cheap and never compiles or loads the CUDA extension
``nerfhead._C``; ops load it on first use (see ``nerfhead.ops._loader``).
"""

__version__ = "0.1.0"
