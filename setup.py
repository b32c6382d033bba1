"""Install file for tfrcnn: Faster R-CNN for TensorFlow 2 / Keras 3."""

from setuptools import find_packages, setup

setup(
    name="tfrcnn",
    version="0.1.0",
    description="Faster R-CNN (Ren et al., 2015) as readable TensorFlow 2 / Keras 3 layers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["tfrcnn", "tfrcnn.*"]),
    install_requires=[
        "tensorflow==2.21.0",
        "keras>=3.15",
        "numpy",
        "pycocotools",
        "pillow",
        "pyyaml",
        "matplotlib",
        "tensorboard",
        "ai-edge-litert",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-xdist",
            "nbclient",
            "nbformat",
            "ipykernel",
            "opencv-contrib-python-headless",
            # torchvision parity tests and checkpoints (always run in a subprocess)
            "torch==2.14.1",
            "torchvision==0.29.1",
            "ruff==0.17.6",
        ],
        "bench": ["torch==2.14.1", "torchvision==0.29.1"],
        "selective_search": ["opencv-contrib-python-headless"],
    },
    entry_points={"console_scripts": ["tfrcnn=tfrcnn.cli:main"]},
)
