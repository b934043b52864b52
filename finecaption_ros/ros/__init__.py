"""rclpy nodes: the region captioning node, the demo / file / camera source and a caption listener."""
