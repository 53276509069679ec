"""Build nerfhead and, where CUDA can be built, its one extension ``nerfhead._C``.

The extension is built when torch was built with CUDA, ``nvcc`` is found and
``BUILD_NO_CUDA`` is not set to 1. Otherwise the package installs as pure Python and
every op runs through its PyTorch reference. Install with ``--no-build-isolation`` so
the build sees the torch you already have (an isolated build would fetch another one).

Honoured environment variables: ``BUILD_NO_CUDA=1``, ``TORCH_CUDA_ARCH_LIST`` (read by
torch's build helper), ``MAX_JOBS`` (parallel compile jobs, read by torch's ninja build).
"""

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _want_cuda_extension():
    """Return (build?, reason) so the install log says why the extension was (not) built."""
    if os.environ.get("BUILD_NO_CUDA", "0") == "1":
        return False, "BUILD_NO_CUDA=1"
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError:
        return False, "torch is not importable in the build environment (use --no-build-isolation)"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} was built without CUDA"
    if CUDA_HOME is None and shutil.which("nvcc") is None:
        return False, "nvcc / CUDA_HOME not found"
    return True, f"torch {torch.__version__} with CUDA {torch.version.cuda}"


def _extension_modules():
    build, reason = _want_cuda_extension()
    print(f"[nerfhead setup] CUDA extension: {'building' if build else 'skipped'} ({reason})",
          file=sys.stderr)
    if not build:
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    sources = sorted(glob.glob(os.path.join("csrc", "*.cu"))) + [os.path.join("csrc", "ext.cpp")]
    ext = CUDAExtension(
        name="nerfhead._C",
        sources=sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args={
            "cxx": ["-O3", "-std=c++17"],
            "nvcc": ["-O3", "-std=c++17", "--use_fast_math", "--expt-relaxed-constexpr",
                     "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                     "-U__CUDA_NO_HALF2_OPERATORS__"],
        },
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


ext_modules, cmdclass = _extension_modules()

setup(
    name="nerfhead",
    version="0.1.0",
    description="Audio-driven talking-head NeRF: preprocess, train, render, evaluate",
    python_requires=">=3.10",
    packages=find_packages(include=["nerfhead", "nerfhead.*", "preprocess", "preprocess.*"]),
    package_data={"nerfhead": ["py.typed"]},
    install_requires=[
        "torch>=2.1",
        "numpy>=1.24",
        "scipy>=1.10",
        "opencv-python-headless>=4.8",
        "imageio-ffmpeg>=0.4.9",
        "pyyaml>=6",
        "tqdm>=4.60",
        "tensorboard>=2.14",
        "matplotlib>=3.7",
    ],
    extras_require={
        # mediapipe==0.10.21 itself is installed with --no-deps (its metadata pins numpy<2,
        # jax and opencv-contrib, none of which it needs for the APIs we use); these are what
        # it does import.
        "preprocess": ["absl-py", "attrs", "flatbuffers", "protobuf>=3.20,<5", "sounddevice",
                       "eos-py==1.5.0",
                       # optional "ow" audio feature: Google's speech-embedding ONNX model
                       # shipped inside the openwakeword wheel, run with onnxruntime
                       "onnxruntime", "openwakeword==0.4.0"],
        "dev": ["pytest>=7", "ninja"],
        # nerfhead batch: speakers as Ray tasks (ray[default] brings the dashboard), live
        # status table (rich). Without them `nerfhead batch` runs the speakers one by one.
        "batch": ["ray[default]>=2.9", "rich>=13"],
        "backends": ["nerfacc==0.5.3"],
    },
    entry_points={"console_scripts": ["nerfhead=nerfhead.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
