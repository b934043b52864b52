"""rclpy-free pieces of the ROS node: image conversion, stamp pairing, latest-frame slot, region selection,
caption reuse, annotation drawing, statistics and the parameter table. Unit-testable without ROS."""
