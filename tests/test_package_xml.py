"""package.xml passes catkin_pkg validation and declares every ROS package the code imports."""
import ast
import sys
from pathlib import Path

from catkin_pkg.package import parse_package

ROOT = Path(__file__).resolve().parent.parent
# ROS packages a real ROS 2 install has but the PyPI wheels do not (so no ament index entry here).
NOT_ON_PYPI = {"launch", "launch_ros", "launch_pytest", "launch_testing", "ament_index_python"}


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
    index = Path(sys.prefix, "share", "ament_index", "resource_index", "packages", name)
    return name in NOT_ON_PYPI or index.exists()


def test_package_xml_is_valid_and_declares_what_the_code_imports():
    package = parse_package(str(ROOT / "package.xml"))
    package.validate()
    assert package.name == "molmo2_ros"
    run = {d.name for d in package.exec_depends}  # <depend> counts as exec_depend too
    test = {d.name for d in package.test_depends}
    for folder, declared in (("molmo2_ros", run), ("engines", run), ("training", run),
                             ("launch", run), ("tests/launch", run | test)):
        ros = {n for n in imported_top_level(ROOT / folder) if n != "molmo2_ros" and is_ros_package(n)}
        assert ros <= declared, f"{folder} imports ROS packages missing from package.xml: {ros - declared}"
    assert {"rosidl_default_generators", "ament_cmake"} <= {d.name for d in package.buildtool_depends}
