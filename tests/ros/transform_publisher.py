"""Publishes transforms from its own OS process, as a robot's other nodes do (the tests'
stand-in for `ros2 run tf2_ros static_transform_publisher`, a C++ executable not built
here; tf2_ros' Python broadcasters publish the same /tf_static and /tf messages).

    python transform_publisher.py DOMAIN static PARENT CHILD X Y Z QX QY QZ QW
    python transform_publisher.py DOMAIN moving PARENT CHILD VX T0_NS [HZ]

`moving`: CHILD at x = VX * (stamp - T0_NS) / 1e9 in PARENT, stamped now, HZ times a
second (default 50), until the process is stopped. Prints "publishing" once it does.
"""
from __future__ import annotations

import sys
import time

import rclpy
from geometry_msgs.msg import TransformStamped
from rclpy.context import Context
from tf2_ros import StaticTransformBroadcaster, TransformBroadcaster

from molmo2_ros.ros.messages import to_time


def transform(parent: str, child: str, stamp_ns: int, xyz, xyzw=(0.0, 0.0, 0.0, 1.0)) -> TransformStamped:
    t = TransformStamped(child_frame_id=child)
    t.header.frame_id = parent
    t.header.stamp = to_time(stamp_ns)
    t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = xyz
    t.transform.rotation.x, t.transform.rotation.y, t.transform.rotation.z, t.transform.rotation.w = xyzw
    return t


def main(argv: list[str]) -> None:
    domain, kind, parent, child, *numbers = argv
    context = Context()
    rclpy.init(context=context, domain_id=int(domain))
    node = rclpy.create_node(f"test_{kind}_transform_publisher", context=context)
    try:
        if kind == "static":
            values = [float(v) for v in numbers]
            StaticTransformBroadcaster(node).sendTransform(transform(parent, child, time.time_ns(), values[:3],
                                                                     values[3:]))
            print("publishing", flush=True)
            while context.ok():   # keep serving the latched /tf_static to late joiners
                time.sleep(0.1)
        else:
            vx, t0_ns = float(numbers[0]), int(numbers[1])
            period = 1.0 / (float(numbers[2]) if len(numbers) > 2 else 50.0)
            broadcaster = TransformBroadcaster(node)
            print("publishing", flush=True)
            while context.ok():
                now = time.time_ns()
                broadcaster.sendTransform(transform(parent, child, now, (vx * (now - t0_ns) / 1e9, 0.0, 0.0)))
                time.sleep(period)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)


if __name__ == "__main__":
    main(sys.argv[1:])
