"""package.xml passes catkin_pkg validation, declares every package the code imports with its
rosdep key (or names where it comes from instead), and the README's `rosdep install` step
resolves every key: `rosdep install --simulate` offline against ../shared/rosdistro-snapshot
(a copy of ros/rosdistro), shown to fail when a key's definition is missing."""
import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from catkin_pkg.package import parse_package

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = ROOT.parent / "shared" / "rosdistro-snapshot"
# ROS packages a real ROS 2 install has but the PyPI wheels do not (so no ament index entry here).
NOT_ON_PYPI = {"launch", "launch_ros", "launch_pytest", "launch_testing", "ament_index_python"}
# Python modules whose ROS package has another name.
ROS_PACKAGE_OF = {"tf2_ros": "tf2_ros_py"}
# Third-party Python imports -> their rosdep keys (rosdep/python.yaml).
ROSDEP_KEYS = {
    "numpy": "python3-numpy", "cv2": "python3-opencv", "yaml": "python3-yaml", "scipy": "python3-scipy",
    "tqdm": "python3-tqdm", "torch": "python3-pytorch-pip", "transformers": "python3-transformers-pip",
    "onnxruntime": "python3-onnxruntime-pip", "rosbags": "python3-rosbags-pip",
    "pytest": "python3-pytest", "catkin_pkg": "python3-catkin-pkg", "selenium": "python3-selenium",
    "psutil": "python3-psutil",
}
# Imports without a rosdep key -> the requirements line that provides them. tensorrt: JetPack on a
# Jetson, NVIDIA's wheels elsewhere (the TensorRT backend's README section), never a requirement.
NO_ROSDEP_KEY = {"av": "av", "tokenizers": "tokenizers", "safetensors": "safetensors",
                 "accelerate": "accelerate", "peft": "peft", "onnx": "onnx", "ml_dtypes": "onnx",
                 "tensorrt": None, "torchcodec": "torchcodec"}
# The package's own modules, and the test and bench helpers their modules import by file name.
OURS = {"molmo2_ros", "engines", "training"} | {path.stem for folder in ("tests", "bench")
                                                for path in (ROOT / folder).rglob("*.py")}


def imported_top_level(folder: Path) -> set[str]:
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def is_ros_package(name: str) -> bool:
    index = Path(sys.prefix, "share", "ament_index", "resource_index", "packages", ROS_PACKAGE_OF.get(name, name))
    return name in NOT_ON_PYPI or index.exists()


def requirement_names(*files: str) -> set[str]:
    lines = (line.split("#")[0].strip() for name in files for line in (ROOT / "requirements" / name).open())
    return {re.split(r"[\[=<>~ ]", line)[0].lower() for line in lines if line}


def test_package_xml_is_valid_and_declares_what_the_code_imports():
    package = parse_package(str(ROOT / "package.xml"))
    package.validate()
    assert package.name == "molmo2_ros"
    run = {d.name for d in package.exec_depends}  # <depend> counts as exec_depend too
    test = {d.name for d in package.test_depends}
    for folder, declared in (("molmo2_ros", run), ("engines", run), ("training", run),
                             ("launch", run), ("tests", run | test), ("bench", run | test)):
        ros = {ROS_PACKAGE_OF.get(n, n) for n in imported_top_level(ROOT / folder)
               if n != "molmo2_ros" and is_ros_package(n)}
        assert ros <= declared, f"{folder} imports ROS packages missing from package.xml: {ros - declared}"
    assert {"rosidl_default_generators", "ament_cmake"} <= {d.name for d in package.buildtool_depends}


@pytest.mark.parametrize("folders, scope", [(("molmo2_ros", "engines", "training", "launch"), "exec"),
                                            (("tests", "bench"), "test")])
def test_every_python_import_has_its_rosdep_key_or_a_requirement(folders, scope):
    package = parse_package(str(ROOT / "package.xml"))
    declared = {d.name for d in package.exec_depends}
    requirements = requirement_names("runtime.txt")
    if scope == "test":
        declared |= {d.name for d in package.test_depends}
        requirements |= requirement_names("dev.txt", "serving.txt")
    third_party = {name for folder in folders for name in imported_top_level(ROOT / folder)
                   if name not in sys.stdlib_module_names and name not in OURS and not is_ros_package(name)}
    unknown = third_party - ROSDEP_KEYS.keys() - NO_ROSDEP_KEY.keys()
    assert not unknown, f"{folders} import {unknown}: add its rosdep key to package.xml and ROSDEP_KEYS here"
    missing = {ROSDEP_KEYS[n] for n in third_party & ROSDEP_KEYS.keys()} - declared
    assert not missing, f"package.xml lacks the {scope} keys {missing}"
    unprovided = {NO_ROSDEP_KEY[n] for n in third_party & NO_ROSDEP_KEY.keys()} - requirements - {None}
    assert not unprovided, f"no rosdep key and not in requirements/: {unprovided}"


def rosdep_install_simulate(tmp_path: Path, snapshot: Path) -> subprocess.CompletedProcess:
    """The README's `rosdep install --from-paths src --ignore-src -y`, simulated for Ubuntu
    24.04 / Jazzy, with rosdep's sources and the distribution index read from `snapshot`
    (as the snapshot's README shows; no network)."""
    rosdep = Path(sys.prefix, "bin", "rosdep")
    assert rosdep.exists(), "rosdep is not installed (requirements/dev.txt pins it; run scripts/bootstrap.sh)"
    sources = tmp_path / "sources.list.d"
    sources.mkdir()
    (sources / "20-default.list").write_text(
        f"yaml file://{snapshot}/rosdep/base.yaml\nyaml file://{snapshot}/rosdep/python.yaml\n")
    # without the prefixes of this process (the venv is one): --ignore-src would count the ROS
    # packages found there as provided and leave their keys unchecked
    env = {key: value for key, value in os.environ.items()
           if key not in ("AMENT_PREFIX_PATH", "ROS_PACKAGE_PATH", "CMAKE_PREFIX_PATH", "COLCON_PREFIX_PATH")}
    env.update(ROSDISTRO_INDEX_URL=f"file://{snapshot}/index-v4.yaml", ROSDEP_SOURCE_PATH=str(sources),
               ROS_HOME=str(tmp_path / "ros_home"))
    update = subprocess.run([str(rosdep), "update", "--rosdistro", "jazzy"], env=env, capture_output=True,
                            text=True, timeout=300)
    assert update.returncode == 0, update.stdout + update.stderr
    workspace = tmp_path / "ws"
    (workspace / "src" / "molmo2_ros").mkdir(parents=True)
    shutil.copy(ROOT / "package.xml", workspace / "src" / "molmo2_ros")
    # --reinstall: every key in the plan, also those whose package this machine has (pip's
    # installer sees the venv's torch when the venv is activated)
    return subprocess.run([str(rosdep), "install", "--simulate", "--reinstall", "--from-paths", "src",
                           "--ignore-src", "-y",
                           "--os=ubuntu:noble", "--rosdistro=jazzy"], cwd=workspace, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def snapshot():
    if not SNAPSHOT.is_dir():
        reason = f"no rosdistro snapshot at {SNAPSHOT} (rosdep needs it to run offline)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must check the rosdep keys, but {reason}", pytrace=False)
        pytest.skip(reason)
    return SNAPSHOT


def test_rosdep_resolves_every_key(tmp_path, snapshot):
    result = rosdep_install_simulate(tmp_path, snapshot)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "could not" not in output and "ERROR" not in output, output
    # ROS packages through the jazzy distribution file, Python ones through apt and pip
    for installed in ("ros-jazzy-rclpy", "ros-jazzy-launch-ros", "ros-jazzy-ros2action", "python3-opencv",
                      "torch", "transformers", "onnxruntime", "rosbags"):
        assert re.search(rf"\b{installed}\b", output), f"{installed} not in rosdep's plan:\n{output}"


def test_rosdep_check_fails_when_a_key_is_undefined(tmp_path, snapshot):
    """The same check against a copy of the snapshot without python3-rosbags-pip's definition."""
    broken = tmp_path / "snapshot"
    shutil.copytree(snapshot, broken)
    python_yaml = broken / "rosdep" / "python.yaml"
    text, count = re.subn(r"^python3-rosbags-pip:\n(?:[ \t].*\n)*", "", python_yaml.read_text(), flags=re.M)
    assert count == 1
    python_yaml.write_text(text)
    result = rosdep_install_simulate(tmp_path, broken)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "python3-rosbags-pip" in output and "Cannot locate rosdep definition" in output, output
