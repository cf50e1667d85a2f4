"""A ROS 2 underlay without molmo2_ros, made from the pip route's venv in a few seconds.

The colcon route's test needs what /opt/ros/jazzy gives a ROS user (the ROS 2 packages, the
ros2 tools, colcon, rosdep) plus the Python dependencies, but not this package: the
bootstrap's .venv has all of them and is also a ROS prefix holding molmo2_ros (interfaces,
executables, ament index entry, the editable install and its commands). Installing the rest
again would take many minutes, so the underlay is a new venv on the same base Python whose
site-packages, lib/, share/ and include/ are links into .venv's, leaving out every file of
molmo2_ros; its commands are copies of .venv's with the shebang naming the underlay's Python.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

# Names of what the pip route installed for molmo2_ros itself, at any depth of the prefix.
OURS = re.compile(r"^(lib)?molmo2_ros([_.-]|$)|^__editable__[._]+molmo2_ros|^molmo2-")
# Top-level entries of the venv that are not part of the prefix a ROS user would have.
NOT_COPIED = {"bin", "pyvenv.cfg", "lib64", "build"}


def make_underlay(venv: Path, target: Path) -> Path:
    """Build the underlay at `target`; returns its setup.bash (what /opt/ros/jazzy/setup.bash is)."""
    base = Path(sys.base_prefix, "bin", f"python{sys.version_info.major}.{sys.version_info.minor}")
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(target)], check=True, timeout=120)
    holding = _dirs_holding_ours(venv)
    for entry in sorted(venv.iterdir()):
        if entry.name not in NOT_COPIED:
            _link_view(entry, target / entry.name, holding)
    _copy_commands(venv / "bin", target / "bin")
    setup = target / "setup.bash"
    setup.write_text(f"# what /opt/ros/jazzy/setup.bash sets, for this underlay\n"
                     f"source {target}/bin/activate\n"
                     f"export AMENT_PREFIX_PATH={target} CMAKE_PREFIX_PATH={target}\n")
    return setup


def _dirs_holding_ours(venv: Path) -> set[Path]:
    """Every directory of `venv` that holds something of molmo2_ros (at any depth)."""
    holding = set()
    for folder, dirs, files in os.walk(venv):
        found = [name for name in dirs + files if OURS.match(name)]
        dirs[:] = [d for d in dirs if not OURS.match(d)]
        if found:
            path = Path(folder)
            while path != venv.parent:
                holding.add(path)
                path = path.parent
    return holding


def _link_view(source: Path, target: Path, holding: set[Path]) -> None:
    """`target` shows `source` without molmo2_ros: a link where nothing of it lies below, else a
    directory of such views."""
    if OURS.match(source.name):
        return
    if source not in holding:
        if not target.exists():
            target.symlink_to(source)
        return
    target.mkdir(exist_ok=True)
    for entry in source.iterdir():
        _link_view(entry, target / entry.name, holding)


def _copy_commands(source: Path, target: Path) -> None:
    """The venv's commands (ros2, colcon, rosdep, ...) for the underlay's own Python."""
    shebang = f"#!{source}/python"
    for command in sorted(source.iterdir()):
        if OURS.match(command.name) or (target / command.name).exists():
            continue  # molmo2_ros's commands; the venv's own python and activate scripts
        if command.is_file() and command.read_bytes().startswith(shebang.encode()):
            text = command.read_text().replace(shebang, f"#!{target}/python", 1)
            (target / command.name).write_text(text)
            (target / command.name).chmod(0o755)
        else:
            (target / command.name).symlink_to(command)
