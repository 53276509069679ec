"""Build nerfhead and its one extension ``nerfhead._C`` (always: a compile error is an error).

``nerfhead._C`` holds the hash-grid and ray-marching kernels (``csrc/``): per-item bodies in
one header per op family, run by a CPU launcher (``*_cpu.cpp``, ``at::parallel_for``) and a
CUDA launcher (``*_cuda.cu``). It is built as

* C++ and CUDA when torch was built with CUDA, ``nvcc`` is found and ``BUILD_NO_CUDA`` is not 1;
* plain C++ (the CPU kernels only) otherwise: a CPU-only torch, no nvcc, or ``BUILD_NO_CUDA=1``.

The build needs the torch you already have: install with ``--no-build-isolation`` (an
isolated build would fetch another torch). Honoured environment variables:
``BUILD_NO_CUDA=1``, ``TORCH_CUDA_ARCH_LIST`` (read by torch's build helper), ``MAX_JOBS``
(parallel compile jobs, read by torch's ninja build).
"""

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _cuda_part():
    """Return (build the CUDA part?, reason) so the install log says why."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    if os.environ.get("BUILD_NO_CUDA", "0") == "1":
        return False, "BUILD_NO_CUDA=1"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} was built without CUDA"
    if CUDA_HOME is None and shutil.which("nvcc") is None:
        return False, "nvcc / CUDA_HOME not found"
    return True, f"torch {torch.__version__} with CUDA {torch.version.cuda}"


def _extension_modules():
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError as e:
        sys.exit(f"[nerfhead setup] nerfhead builds its C++ extension against the installed torch, "
                 f"which cannot be imported here ({e}). Install torch first, then install nerfhead "
                 f"with --no-build-isolation (see README).")
    with_cuda, reason = _cuda_part()
    csrc = os.path.join("csrc")
    cpp = sorted(glob.glob(os.path.join(csrc, "*.cpp")))
    cu = sorted(glob.glob(os.path.join(csrc, "*.cu")))
    # Our sources are C++17; the files that include torch headers get the standard torch's
    # build helper picks (no -std here). -ffp-contract=off: the host compiler must not fuse
    # the multiply-adds that the bit-exact kernels keep separate (csrc/common.h). -fopenmp
    # (compile only): at::parallel_for is inline OpenMP code when torch's backend is OpenMP;
    # not linking libgomp ourselves keeps torch's own copy the only OpenMP runtime.
    cxx = ["-O3", "-g0", "-ffp-contract=off"]
    if torch.backends.openmp.is_available():
        cxx.append("-fopenmp")
    # No --use_fast_math: the bodies are shared with the CPU build and must compute the
    # same functions (expf, not __expf; IEEE division, no flush-to-zero).
    nvcc = ["-O3", "-std=c++17", "--expt-relaxed-constexpr"]
    print(f"[nerfhead setup] nerfhead._C: C++ kernels" + (" + CUDA kernels" if with_cuda else "")
          + f" ({reason}); torch {torch.__version__}", file=sys.stderr)
    if with_cuda:
        ext = CUDAExtension(name="nerfhead._C", sources=cpp + cu, include_dirs=[os.path.join(HERE, "csrc")],
                            define_macros=[("NERFHEAD_WITH_CUDA", "1")],
                            extra_compile_args={"cxx": cxx, "nvcc": nvcc})
    else:
        ext = CppExtension(name="nerfhead._C", sources=cpp, include_dirs=[os.path.join(HERE, "csrc")],
                           extra_compile_args={"cxx": cxx})
    build_ext = BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)
    return [ext], {"build_ext": build_ext}


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
                       # word timings from a clip's audio (nerfhead words): its wheel carries
                       # the US-English model
                       "pocketsphinx>=5.0",
                       "eos-py==1.5.0",
                       # optional "ow" audio feature: Google's speech-embedding ONNX model
                       # shipped inside the openwakeword wheel, run with onnxruntime
                       "onnxruntime", "openwakeword==0.4.0",
                       # optional "hubert" audio feature (HuBERT-large, ER-NeRF's): the model
                       # code; its weights come from the HuggingFace hub or a weights folder.
                       # Needs no torchvision for this model (checked with transformers 5.24)
                       "transformers>=4.40"],
        "dev": ["pytest>=7", "ninja"],
        # nerfhead batch: speakers as Ray tasks (ray[default] brings the dashboard), live
        # status table (rich). Without them `nerfhead batch` runs the speakers one by one.
        "batch": ["ray[default]>=2.9", "rich>=13"],
        "backends": ["nerfacc==0.5.3"],
        # nerfhead serve: WebRTC (aiortc brings PyAV, the VP8/Opus codecs and DTLS) on an
        # aiohttp app; neither pulls a torch (checked with aiortc 1.16, aiohttp 3.14)
        "serve": ["aiohttp>=3.9", "aiortc>=1.9"],
    },
    entry_points={"console_scripts": ["nerfhead=nerfhead.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
