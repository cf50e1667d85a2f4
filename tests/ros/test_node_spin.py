"""The node's spin loop goes on after rclpy's executor raised InvalidHandle for an entity
a lifecycle transition destroyed while the executor built its wait set (ros2/rclpy#1142:
destroying a publisher, whose event handlers are waitables, from another thread), and
stops on shutdown as before."""
from __future__ import annotations

import pytest
from rclpy.exceptions import InvalidHandle

from molmo2_ros.ros.node import _spin


class Context:
    def __init__(self, ok: bool):
        self._ok = ok

    def ok(self) -> bool:
        return self._ok


class Executor:
    """Raises InvalidHandle on its first `raises` spins, then returns (shutdown)."""

    def __init__(self, raises: int, context_ok: bool = True):
        self.raises, self.spins, self.context = raises, 0, Context(context_ok)

    def spin(self) -> None:
        self.spins += 1
        if self.spins <= self.raises:
            raise InvalidHandle("cannot use Destroyable because destruction was requested")


class Node:
    def __init__(self):
        self.warnings = []

    def get_logger(self):
        return self

    def warning(self, text: str) -> None:
        self.warnings.append(text)


def test_spin_goes_on_after_a_destroyed_entity_and_says_so():
    executor, node = Executor(raises=2), Node()
    _spin(executor, node)
    assert executor.spins == 3
    assert len(node.warnings) == 2 and "destruction was requested" in node.warnings[0]


def test_spin_raises_when_the_context_is_shut_down():
    with pytest.raises(InvalidHandle):
        _spin(Executor(raises=1, context_ok=False), Node())
