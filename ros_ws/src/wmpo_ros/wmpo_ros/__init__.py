"""ROS 2 nodes of the WMPO stack: arm drivers, policy runner, recorder, teleop and sync."""
