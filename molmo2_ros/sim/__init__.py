"""The synthetic shapes world: moving coloured shapes with exact annotations, for the video
publisher, the demo, tests and training."""
