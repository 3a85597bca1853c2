"""Installable package for epsim. Heavy optional parts are extras:

    pip install -e .              # numba solver, training CLI (CPU torch for checkpoints)
    pip install -e ".[dev]"       # + pytest, test tools
    pip install -e ".[spice]"     # + PySpice (ngspice itself: apt-get install ngspice libngspice0-dev)
    pip install -e ".[notebooks]" # + matplotlib, jupyter kernel, nbclient

torch is pinned to the CPU build that pip finds locally on the development machines
(2.13.0); on a GPU machine install the CUDA build of the same version first.
"""
from setuptools import find_packages, setup

setup(
    name="epsim",
    version="0.1.0",
    description="Analog-circuit simulator for energy-based networks trained with Equilibrium Propagation",
    packages=find_packages(include=["epsim", "epsim.*"]),
    python_requires=">=3.10",
    install_requires=[
        "numpy>=1.24",
        "scipy>=1.10",
        "numba>=0.58",
        "scikit-learn>=1.2",
        "tqdm>=4.60",
        "torch==2.13.0",
        "pillow>=9.1",  # CIFAR-10-C corruptions: frost textures, JPEG, pixelate
    ],
    extras_require={
        "dev": ["pytest>=7", "pytest-timeout"],
        "spice": ["PySpice>=1.5"],
        "notebooks": ["matplotlib>=3.6", "ipykernel", "nbclient", "nbformat", "nbconvert"],
    },
)
