"""ROS-free core: frame window, prompts, answer parsing, grounding results, mapping."""
