"""rclpy adapters: the grounding node, message conversions, publishers."""
