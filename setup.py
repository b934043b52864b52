"""finecaption_ros: FineCaption region captioning as a Python library + CLI (this file) and a ROS 2 package
(CMakeLists.txt / package.xml generate the messages and install the node)."""
from setuptools import find_packages, setup

setup(
    name="finecaption_ros",
    version="0.1.0",
    description="Mask-aware region captioning (FineCaption) for ROS 2, with ONNX Runtime and TensorRT engines",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["finecaption_ros", "finecaption_ros.*"]),
    package_data={"finecaption_ros": ["configs/*.json", "checkpoints/default/*", "ros_support/*.xml"]},
    install_requires=[
        "torch>=2.4,<=2.14.1",
        "transformers>=5.24,<6",
        "tokenizers",
        "safetensors",
        "numpy",
        "pillow",
        "tqdm",
    ],
    extras_require={
        "onnx": ["onnx>=1.16", "onnxruntime>=1.18"],
        # TensorRT's Python API as tested (10.0 - 11.4): the CUDA 12 build (most desktops and servers today), or
        # the CUDA 13 one; on Jetson it comes with JetPack (`sudo apt install python3-libnvinfer`).
        "tensorrt": ["tensorrt-cu12>=10,<11.5", "onnx>=1.16"],
        "tensorrt-cu13": ["tensorrt-cu13>=10.13,<11.5", "onnx>=1.16"],
        "test": ["pytest>=8"],
    },
    entry_points={"console_scripts": ["finecaption = finecaption_ros.cli:main"]},
)
