"""The layers of docs/architecture.md hold: no import runs upwards.

Imports are read from the source (every `import`, also those inside functions), so a
lazy import cannot hide an arrow. Checked on this checkout, and shown to fail on a
temporary tree with bad imports injected.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Repository folder -> import name (engines/ and training/ install inside molmo2_ros).
FOLDERS = {"molmo2_ros": "molmo2_ros", "engines": "molmo2_ros.engines", "training": "molmo2_ros.training"}
# Most specific prefix first.
LAYERS = [
    ("molmo2_ros.msg", "interfaces"), ("molmo2_ros.action", "interfaces"),
    ("molmo2_ros.core", "core"), ("molmo2_ros.sim", "sim"),
    ("molmo2_ros.annotate", "support"), ("molmo2_ros.bag_types", "support"),
    ("molmo2_ros.video_io", "support"), ("molmo2_ros.tiny_model", "support"),
    ("molmo2_ros.backends", "backends"), ("molmo2_ros.ros", "ros"),
    ("molmo2_ros.engines", "engines"), ("molmo2_ros.training", "training"),
    ("molmo2_ros.cli", "entry"), ("molmo2_ros", "entry"),
]
BELOW = {
    "core": {"core"},
    "sim": {"sim", "core"},
    "support": {"support", "core"},
    "backends": {"backends", "support", "core"},
    "ros": {"ros", "backends", "sim", "support", "core", "interfaces"},
    "engines": {"engines", "backends", "sim", "support", "core"},
    "training": {"training", "engines", "backends", "sim", "support", "core"},
    "entry": {"entry", "ros", "engines", "backends", "sim", "support", "core"},   # never training
}
# ament_index_python (a file index, no middleware) may be used anywhere.
ROS_PACKAGES = {"rclpy", "launch", "launch_ros", "builtin_interfaces", "std_msgs",
                "sensor_msgs", "geometry_msgs", "visualization_msgs", "diagnostic_msgs", "lifecycle_msgs",
                "rcl_interfaces", "action_msgs", "tf2_ros", "tf2_msgs", "tf2_py", "tf2_geometry_msgs",
                "message_filters", "vision_msgs"}


def layer_of(module: str) -> str | None:
    for prefix, layer in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return None


def modules(root: Path):
    """(import name, path) of every Python file of the three folders under `root`."""
    for folder, package in FOLDERS.items():
        base = root / folder
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join([package, *parts]), path


def imports(path: Path):
    """(imported module, line, at module level) for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, id(node) in top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            # `from molmo2_ros import engines` imports the subpackage: take the most specific layer
            yield max(names, key=lambda n: len(n) if layer_of(n) else -1), node.lineno, id(node) in top


def violations(root: Path) -> list[str]:
    found = []
    for name, path in modules(root):
        layer = layer_of(name)
        where = path.relative_to(root)
        for target, line, top_level in imports(path):
            head = target.split(".")[0]
            target_layer = layer_of(target) if head == "molmo2_ros" else None
            if target_layer and target_layer not in BELOW[layer]:
                found.append(f"{where}:{line}: {layer} imports {target} ({target_layer})")
            if head in ROS_PACKAGES and layer != "ros":
                found.append(f"{where}:{line}: {layer} imports the ROS package {head}")
            if layer == "core" and head == "torch" and top_level:
                found.append(f"{where}:{line}: core imports torch at import time")
    return found


def test_no_import_runs_up_the_layers():
    assert violations(ROOT) == []


def test_the_check_catches_injected_bad_imports(tmp_path):
    for folder in FOLDERS:
        (tmp_path / folder).mkdir()
    (tmp_path / "molmo2_ros" / "core").mkdir()
    (tmp_path / "molmo2_ros" / "backends").mkdir()
    (tmp_path / "molmo2_ros" / "core" / "bad.py").write_text(
        "import torch\nfrom molmo2_ros.ros import node\n\ndef f():\n    import rclpy\n")
    (tmp_path / "molmo2_ros" / "backends" / "bad.py").write_text(
        "def g():\n    from molmo2_ros import engines\n    from molmo2_ros.training.trainer import train\n")
    (tmp_path / "molmo2_ros" / "cli.py").write_text("from molmo2_ros.training import cli\n")
    (tmp_path / "engines" / "ok.py").write_text("from molmo2_ros.backends.engine_folder import VISION_FILE\n")
    found = violations(tmp_path)
    assert found == [
        "molmo2_ros/backends/bad.py:2: backends imports molmo2_ros.engines (engines)",
        "molmo2_ros/backends/bad.py:3: backends imports molmo2_ros.training.trainer.train (training)",
        "molmo2_ros/cli.py:1: entry imports molmo2_ros.training.cli (training)",
        "molmo2_ros/core/bad.py:1: core imports torch at import time",
        "molmo2_ros/core/bad.py:2: core imports molmo2_ros.ros.node (ros)",
        "molmo2_ros/core/bad.py:5: core imports the ROS package rclpy",
    ]


# The node's parts: each gets what it uses through its constructor. The rclpy node it is
# given is for rclpy's own API (entities, logger, clock, names), never to reach the
# node's other parts or state.
PARTS = ("ingest", "serving", "outputs", "depth_input", "robot_frames", "standard_messages")


def reach_throughs(root: Path, node_api: set[str]) -> list[str]:
    """Every `node.X` / `self._node.X` in a part whose X is not rclpy's node API, and every
    import of the node module by a part."""
    found = []
    for part in PARTS:
        path = root / "molmo2_ros" / "ros" / f"{part}.py"
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr not in node_api and (
                    isinstance(node.value, ast.Name) and node.value.id == "node"
                    or isinstance(node.value, ast.Attribute) and node.value.attr == "_node"):
                found.append(f"{path.relative_to(root)}:{node.lineno}: {part} reaches node.{node.attr}")
        for target, line, _ in imports(path):
            if target.startswith("molmo2_ros.ros.node"):
                found.append(f"{path.relative_to(root)}:{line}: {part} imports {target}")
    return found


def rclpy_node_api() -> set[str]:
    from rclpy.lifecycle import LifecycleNode

    return {name for name in dir(LifecycleNode) if not name.startswith("_")}


def test_the_node_parts_do_not_reach_through_the_node():
    assert reach_throughs(ROOT, rclpy_node_api()) == []


def test_the_check_catches_a_part_reaching_through_the_node(tmp_path):
    ros = tmp_path / "molmo2_ros" / "ros"
    ros.mkdir(parents=True)
    for part in PARTS:
        (ros / f"{part}.py").write_text("class Part:\n    def __init__(self, node):\n        self._node = node\n")
    (ros / "serving.py").write_text(
        "from molmo2_ros.ros.node import GroundingNode\n\n"
        "class Part:\n    def __init__(self, node):\n        node.create_timer(1.0, print)\n"
        "        self._node = node\n\n    def f(self):\n        return self._node.ingest.frames_total\n"
        "\n    def g(self):\n        self._node.get_logger().info(self._node.settings.fps)\n")
    assert reach_throughs(tmp_path, rclpy_node_api()) == [
        "molmo2_ros/ros/serving.py:9: serving reaches node.ingest",
        "molmo2_ros/ros/serving.py:12: serving reaches node.settings",
        "molmo2_ros/ros/serving.py:1: serving imports molmo2_ros.ros.node.GroundingNode",
    ]
