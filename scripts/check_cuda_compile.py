#!/usr/bin/env python3
"""Compile-check the CUDA part of nerfhead._C without a GPU (what CI can do).

A CPU-only torch builds nerfhead._C without its CUDA part, so this checks the rest:

* every ``csrc/*.cu`` (the CUDA launchers) is compiled to an object file with nvcc and the
  flags setup.py gives it (``-O3 -std=c++17 --expt-relaxed-constexpr``, ``-arch=<arch>``).
  They include no torch header (only csrc's own), so each takes seconds; a torch include
  would fail here, which keeps them that way;
* every torch-facing entry file (``csrc/*.cpp`` that includes ``entry.h``) is syntax-checked
  with ``g++ -fsyntax-only -DNERFHEAD_WITH_CUDA=1``: its CUDA branch (stream, device guard)
  against torch's c10/cuda headers and the CUDA toolkit's.

Files compile in parallel (``--jobs``, default 2). Prints each file's time; exits non-zero
naming the files that failed.

Usage: python3 scripts/check_cuda_compile.py [--arch sm_80] [--jobs 2] [files...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CSRC = REPO / "csrc"


def _shim_include_dir(tmp: Path) -> Path:
    # CPU-only torch wheels ship c10/cuda headers but not the CMake-generated
    # c10/cuda/impl/cuda_cmake_macros.h that c10/cuda/CUDAMacros.h includes. We write the
    # one-line header a CUDA build of torch generates into a temporary include dir placed
    # first on the include path. (A CUDA wheel has the real file; the shim is then unused.)
    inc = tmp / "shim_include"
    target = inc / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    target.parent.mkdir(parents=True)
    target.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    return inc


def _torch_includes() -> list[str]:
    from torch.utils.cpp_extension import include_paths

    return include_paths()


def _abi_flag() -> str:
    import torch

    return f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"


def _cuda_include(nvcc: str) -> Path:
    """The CUDA toolkit's include dir ($CUDA_HOME, /usr/local/cuda or next to nvcc; nvcc may
    be a wrapper script elsewhere on PATH)."""
    homes = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda", str(Path(nvcc).resolve().parent.parent)]
    for home in filter(None, homes):
        if (Path(home) / "include" / "cuda_runtime_api.h").is_file():
            return Path(home) / "include"
    return Path(homes[1]) / "include"


def cuda_entry_files() -> list[Path]:
    """The .cpp files whose CUDA branch only a CUDA build compiles (they include entry.h)."""
    return [f for f in sorted(CSRC.glob("*.cpp")) if '#include "entry.h"' in f.read_text()]


def build_commands(files: list[Path], arch: str, shim: Path, out_dir: Path) -> dict[Path, list[str]]:
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    cxx = shutil.which("g++") or shutil.which("c++") or "g++"
    cuda_include = _cuda_include(nvcc)
    cmds = {}
    for f in files:
        if f.suffix == ".cu":  # keep in sync with setup.py's nvcc flags
            cmds[f] = [nvcc, "-c", str(f), "-o", str(out_dir / (f.stem + ".o")), "-O3", "-std=c++17",
                       "--expt-relaxed-constexpr", f"-arch={arch}", "-Xcompiler", "-fPIC", f"-I{CSRC}"]
        else:  # an entry file, with its CUDA branch: torch's headers, the shim, CUDA's headers
            incs = [f"-I{shim}"] + [f"-I{p}" for p in _torch_includes()] + [f"-I{CSRC}"]
            cmds[f] = [cxx, "-fsyntax-only", "-std=c++17", "-DNERFHEAD_WITH_CUDA=1", _abi_flag(), str(f),
                       *incs, f"-I{cuda_include}"]
    return cmds


def _run(path: Path, cmd: list[str]) -> tuple[Path, int, float, str]:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return path, proc.returncode, time.monotonic() - t0, proc.stdout + proc.stderr


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", type=Path, help="default: csrc/*.cu and the entry .cpp files")
    ap.add_argument("--arch", default=os.environ.get("NERFHEAD_CUDA_ARCH", "sm_80"),
                    help="nvcc -arch (default sm_80, or $NERFHEAD_CUDA_ARCH)")
    ap.add_argument("--jobs", type=int, default=2, help="files compiled at once (default 2)")
    args = ap.parse_args(argv)

    if shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").exists():
        print("check_cuda_compile: nvcc not found on PATH", file=sys.stderr)
        return 2
    files = [f.resolve() for f in args.files] or (sorted(CSRC.glob("*.cu")) + cuda_entry_files())
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        print(f"check_cuda_compile: no such file(s): {', '.join(missing)}", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="nerfhead_cc_") as tmp:
        tmp_path = Path(tmp)
        cmds = build_commands(files, args.arch, _shim_include_dir(tmp_path), tmp_path)
        print(f"check_cuda_compile: {len(files)} file(s), arch {args.arch}, {args.jobs} job(s)", flush=True)
        t0 = time.monotonic()
        failed = []
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for path, rc, secs, log in pool.map(lambda f: _run(f, cmds[f]), files):
                rel = path.relative_to(REPO) if path.is_relative_to(REPO) else path
                print(f"  {'ok  ' if rc == 0 else 'FAIL'} {rel}  {secs:6.1f} s", flush=True)
                if rc != 0:
                    failed.append(str(rel))
                    print(log.rstrip()[-8000:], file=sys.stderr, flush=True)
                else:  # compiles; show warnings about our sources, not torch's headers
                    ours = [ln for ln in log.splitlines() if "warning" in ln and str(CSRC) in ln]
                    if ours:
                        print("\n".join(ours[:40]), file=sys.stderr, flush=True)
        print(f"check_cuda_compile: total {time.monotonic() - t0:.1f} s", flush=True)
    if failed:
        print(f"check_cuda_compile: FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
