"""The README's "Building with colcon on a ROS 2 install", command for command, as a ROS user
runs it: a workspace with this package in src/, an underlay with the ROS 2 pieces but not this
package, `colcon build`, `source install/setup.bash`; then, from the install space, the package
imports from there (neither from the checkout nor from the pip route's venv), `ros2 launch
molmo2_ros molmo2.launch.py` answers `ros2 action send_goal`, and the console commands run.

Where CI cannot run a README line as written, STAND_INS says what runs instead and why; the
test fails if the README's commands and this table drift apart.
"""
import sys
from pathlib import Path
from typing import NamedTuple

import psutil
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from ros2_cli import ROOT, VENV, Shell, private_domain, require_ros2_tools  # noqa: E402
from underlay import make_underlay  # noqa: E402

require_ros2_tools()

# README line -> what CI runs in its place ({underlay}: the underlay's setup.bash).
STAND_INS = {
    # /opt/ros/jazzy: the pip route's ROS 2 wheels and tools, without molmo2_ros (underlay.py)
    "source /opt/ros/jazzy/setup.bash": "source {underlay}",
    # the checkout under test, uncommitted changes included
    "git clone <this repository> src/molmo2_ros": f"ln -s {ROOT} src/molmo2_ros",
    # no apt here: tests/test_package_xml.py resolves every key with `rosdep install --simulate`
    "rosdep install --from-paths src --ignore-src -y": "true",
    # the underlay holds them already: installing must find nothing to fetch
    "python3 -m pip install -r src/molmo2_ros/requirements/runtime.txt":
        "python3 -m pip install --no-index -r src/molmo2_ros/requirements/runtime.txt",
}
NODE = "/molmo2_grounding"


def readme_blocks() -> list[list[str]]:
    """The command lines of each code block in the README's colcon section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Building with colcon on a ROS 2 install\n", 1)[1].split("\n## ", 1)[0]
    blocks, current = [], []
    for line in section.splitlines() + [""]:
        if line.startswith("    "):
            current.append(line.strip())
        elif current and line.strip() == "":
            blocks.append(current)
            current = []
    return blocks


def ci_command(line: str, underlay: Path) -> str:
    return STAND_INS[line].format(underlay=underlay) if line in STAND_INS else line


class Route(NamedTuple):
    shell: "WorkspaceShell"   # a new terminal: underlay and install space sourced
    install: Path             # ~/molmo_ws/install/molmo2_ros
    commands: list[str]       # the README's commands after the two `source` lines
    underlay: Path            # the underlay's setup.bash


@pytest.fixture(scope="module")
def route(tmp_path_factory):
    """The README's first block run once in a fresh HOME (the build); then the shell of its
    second block: a new terminal, with the underlay and the install space sourced."""
    build, use = readme_blocks()
    assert set(STAND_INS) <= set(build), "a stand-in names a command the README's colcon section lost"
    home = tmp_path_factory.mktemp("home")
    underlay = make_underlay(VENV, tmp_path_factory.mktemp("underlay") / "jazzy")
    shell = WorkspaceShell(private_domain(29), tmp_path_factory.mktemp("colcon_route"), home)
    output = shell.run("set -e\n" + "\n".join(ci_command(line, underlay) for line in build), timeout=900)
    assert "Summary: 1 package finished" in output, output
    shell.prelude = " && ".join(ci_command(line, underlay) for line in use[:2])
    yield Route(shell, home / "molmo_ws" / "install" / "molmo2_ros", use[2:], underlay)
    shell.close()


class WorkspaceShell(Shell):
    """bash as a ROS user's terminal: nothing of the pip route's venv in its environment (no
    PATH entry, no library path, no ROS variables), HOME a fresh folder, commands run in HOME."""

    def __init__(self, domain: int, log_dir: Path, home: Path):
        super().__init__(domain, log_dir)
        self.env = {key: value for key, value in self.env.items()
                    if key not in ("LD_LIBRARY_PATH", "CMAKE_PREFIX_PATH", "_ROS_WHEELS_BOOTSTRAP_COMPLETE")
                    and not key.startswith("COLCON")}
        self.env["PATH"] = ":".join(p for p in self.env["PATH"].split(":") if not p.startswith(str(VENV)))
        self.env["HOME"] = str(home)
        self.prelude = "true"

    def _argv(self, command: str) -> list[str]:
        return ["bash", "-c", f"cd ~ && {self.prelude} && {command}"]


def readme_line(commands: list[str], start: str) -> str:
    return next(line for line in commands if line.startswith(start))


def test_readme_section_is_what_ci_runs():
    build, use = readme_blocks()
    assert build[-2:] == ["colcon build --packages-select molmo2_ros", "source install/setup.bash"]
    assert use[:2] == ["source /opt/ros/jazzy/setup.bash", "source ~/molmo_ws/install/setup.bash"]
    # every command of the second block is one the tests below run
    assert [line.split(" ")[0] + " " + line.split(" ")[1] for line in use[2:]] == [
        "python3 -c", "ros2 pkg", "molmo2-ros --help", "ros2 run", "ros2 launch", "ros2 action"]


def test_the_package_imports_from_the_install_space(route):
    shell, install, commands, _ = route
    site = install / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    assert shell.run(readme_line(commands, "python3 -c")).split() == [str(site / "molmo2_ros" / "__init__.py")]
    assert shell.run(readme_line(commands, "ros2 pkg prefix")).strip() == str(install)
    files = shell.run("python3 -c 'import molmo2_ros.action, molmo2_ros.engines, molmo2_ros.training as m; "
                      "print(molmo2_ros.action.__file__, molmo2_ros.engines.__file__, m.__file__)'").split()
    assert files == [str(site / "molmo2_ros" / name / "__init__.py") for name in ("action", "engines", "training")]
    path = shell.run("python3 -c 'import sys; print(*sys.path)'")
    assert str(ROOT) not in path and str(VENV) not in path, path
    # the one namespace: nothing of ours at the top of site-packages
    out = shell.run("python3 -c 'import engines' 2>&1; python3 -c 'import training' 2>&1", check=False)
    assert out.count("ModuleNotFoundError") == 2, out


def test_console_commands_run_the_installed_code(route):
    shell, install, commands, _ = route
    out = shell.run(readme_line(commands, "molmo2-ros --help"))
    for command in ("molmo2-ros", "molmo2-engines", "molmo2-train", "molmo2-eval"):
        assert f"usage: {command}" in out, out
        assert shell.run(f"command -v {command}").strip() == str(install / "bin" / command)


def test_launch_answers_a_goal(route):
    shell, install, commands, _ = route
    camera = shell.start(readme_line(commands, "ros2 run "), "video_publisher")
    launch = shell.start(readme_line(commands, "ros2 launch "), "launch")
    try:
        launch.wait_for(lambda log: "active: Image on /camera/image_raw" in log, 600, "the node to activate")
        shell.wait_for_node(NODE)
        out = shell.run(readme_line(commands, "ros2 action send_goal"))
        result = yaml.safe_load(out.split("Result:\n", 1)[1].split("\nGoal finished")[0].strip())
        assert result["error_code"] == 0, result["error_message"]
        assert result["grounding"]["points"], result["grounding"]["answer"]
        assert "Goal finished with status: SUCCEEDED" in out
        # the node and the camera are the install space's executables
        started = [p.cmdline() for p in psutil.Process(launch.proc.pid).children(recursive=True)
                   + psutil.Process(camera.proc.pid).children(recursive=True)]
        executables = {Path(argv[1]).name: argv[1] for argv in started
                       if len(argv) > 1 and "lib/molmo2_ros/" in argv[1]}
        assert executables == {name: str(install / "lib" / "molmo2_ros" / name)
                               for name in ("molmo2_grounding", "video_publisher")}, started
    finally:   # stopped now: the camera and the node would take CPU from the next test's build
        launch.stop()
        camera.stop()


def test_symlink_install_gives_the_same_package(route):
    """`colcon build --symlink-install` (a second build and install base beside the first, from a
    terminal with only the underlay sourced): the same modules and commands, the Python files
    linked to the checkout."""
    shell, install, _, underlay = route
    linked = install.parents[1] / "install-symlink" / "molmo2_ros"
    site = linked / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    saved, shell.prelude = shell.prelude, f"source {underlay}"
    try:
        out = shell.run("cd ~/molmo_ws && colcon build --symlink-install --packages-select molmo2_ros "
                        "--build-base build-symlink --install-base install-symlink", timeout=900)
        shell.prelude += " && source ~/molmo_ws/install-symlink/setup.bash"
        files = shell.run("python3 -c 'import molmo2_ros.msg, molmo2_ros.engines as e; "
                          "print(molmo2_ros.__file__, molmo2_ros.msg.__file__, e.__file__)'").split()
        usage = shell.run("molmo2-train --help")
        where = shell.run("command -v molmo2-train").strip()
        executables = shell.run("ros2 pkg executables molmo2_ros").split("\n")
    finally:
        shell.prelude = saved
    assert "Summary: 1 package finished" in out, out
    assert files == [str(site / "molmo2_ros" / name) for name in
                     ("__init__.py", "msg/__init__.py", "engines/__init__.py")], files
    assert Path(files[0]).resolve() == ROOT / "molmo2_ros" / "__init__.py"
    assert Path(files[2]).resolve() == ROOT / "engines" / "__init__.py"
    assert "usage: molmo2-train" in usage
    assert where == str(linked / "bin" / "molmo2-train")
    # what `ros2 run` finds: executable files (links into the build folder)
    assert executables[:2] == ["molmo2_ros molmo2_grounding", "molmo2_ros video_publisher"], executables
