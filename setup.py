"""Python side of molmo2_ros (the pip route; colcon installs the same code via CMake)."""
from setuptools import find_packages, setup

setup(
    name="molmo2_ros",
    version="0.1.0",
    description="Language-driven grounding in video for ROS 2 with Molmo2",
    license="Apache-2.0",
    python_requires=">=3.10",
    # engines/ and training/ are top-level folders of the repository but install inside the
    # one namespace, as molmo2_ros.engines and molmo2_ros.training.
    packages=find_packages(include=["molmo2_ros", "molmo2_ros.*"])
    + ["molmo2_ros.engines", "molmo2_ros.training"],
    package_dir={"molmo2_ros.engines": "engines", "molmo2_ros.training": "training"},
    include_package_data=True,
    package_data={"molmo2_ros": ["assets/**/*"], "molmo2_ros.training": ["configs/*.yaml", "review_page.html"]},
    entry_points={
        "console_scripts": [
            "molmo2-ros = molmo2_ros.cli:main",
            "molmo2-engines = molmo2_ros.engines.cli:main",
            "molmo2-train = molmo2_ros.training.cli:train_main",
            "molmo2-eval = molmo2_ros.training.cli:eval_main",
        ],
    },
)
