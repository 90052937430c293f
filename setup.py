"""Packaging for m3amba."""
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
exec((here / "m3amba" / "version.py").read_text(), version)

setup(
    name="m3amba",
    version=version["__version__"],
    description="M3amba: CLIP-driven Mamba for multi-modal remote-sensing classification (model zoo)",
    long_description=(here / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    # the top-level weights/ folder (manifest, model cards, small weight files) ships as m3amba/weights/
    packages=find_packages(include=["m3amba", "m3amba.*"]) + ["m3amba.weights"],
    package_dir={"m3amba.weights": "weights"},
    package_data={
        "m3amba.models": ["configs/*.json"],
        "m3amba.weights": ["manifest.json", "*.md", "*/README.md", "*/config.json", "*/*.safetensors"],
    },
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "timm>=1.0",
        "open_clip_torch>=2.24",
        "huggingface_hub>=0.20",
        "safetensors>=0.4",
        "einops",
    ],
    extras_require={
        "cuda": ["mamba-ssm>=2.2"],
        "train": ["tqdm", "numpy", "pyyaml"],
        "data": ["numpy", "scipy", "h5py"],
        "plot": ["matplotlib"],
        "tensorboard": ["tensorboard"],
        "geotiff": ["rasterio"],
        "baseline": ["scikit-learn>=1.1", "numpy"],
        "test": ["pytest>=7", "hypothesis>=6", "numpy", "scipy", "h5py", "pyyaml", "tqdm", "scikit-learn>=1.1",
                 "matplotlib", "rasterio",
                 "mkdocs>=1.6", "mkdocstrings[python]>=0.26"],
        "docs": ["mkdocs>=1.6", "mkdocstrings[python]>=0.26"],
    },
    entry_points={"console_scripts": ["m3amba=m3amba.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Scientific/Engineering :: GIS",
    ],
)
