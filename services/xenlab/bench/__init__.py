"""`xenlab bench`: throughput, latency and scale, side by side with the Linux kernel bridge."""
