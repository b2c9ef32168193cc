"""hf_audiorep: Hugging Face-native audio representation models.

Version ranges here are for users; development and CI install the exact pins of
``requirements-ci.txt`` (torch and torchaudio must match, see the README).
"""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="hf_audiorep",
    version="0.1.0.dev0",
    description="General-purpose audio representation models for the Hugging Face ecosystem",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["hf_audiorep", "hf_audiorep.*"]),
    package_data={
        "hf_audiorep": [
            "data/*.csv",
            "data/embedded/*.csv",
            "data/embedded/*.json",
            "evaluation/metric_modules/*/*.py",
        ]
    },
    install_requires=[
        # torchaudio 2.11 carries no torch pin and is linked against CUDA torch builds:
        # install the two together (requirements-ci.txt pins torch 2.14.1 + torchaudio 2.11.0).
        "torch>=2.11",
        "torchaudio>=2.11",
        "torchcodec>=0.13",  # datasets.Audio decodes with it; needs FFmpeg shared libraries
        "transformers>=5.23,<6",
        "datasets>=5.2,<6",
        "accelerate>=1.15,<2",
        "huggingface-hub>=2.4,<3",
        "safetensors>=0.8",
        "soundfile>=0.13",
        "filetype>=1.2",  # names what an unreadable upload is (an image, a PDF...) in error messages
        "numpy>=1.26",
        "evaluate>=0.4.6",
        "scikit-learn>=1.6",
        "inflect>=7.4",  # singular nouns for the offline tag extractor (rules and word lists in the wheel)
        "tqdm>=4.66",
    ],
    extras_require={
        "train": ["peft>=0.21,<1", "tensorboard>=2.16"],
        "demo": ["gradio>=6.31,<7"],
        # ONNX export and int8 quantisation for devices (hf_audiorep.export, `hf-audiorep export`); onnxscript
        # is what torch.onnx.export's dynamo path translates with.
        "export": ["onnx>=1.23,<2", "onnxruntime>=1.32,<2", "onnxscript>=0.7,<1"],
        "test": [
            "pytest>=9",
            "timm>=1.0",
            "peft>=0.21,<1",
            "gradio>=6.31,<7",
            "tensorboard>=2.16",
            "selenium>=4.51",
            "ruff>=0.14",
            "onnx>=1.23,<2",
            "onnxruntime>=1.32,<2",
            "onnxscript>=0.7,<1",
        ],
    },
    entry_points={"console_scripts": ["hf-audiorep=hf_audiorep.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Multimedia :: Sound/Audio :: Analysis",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
