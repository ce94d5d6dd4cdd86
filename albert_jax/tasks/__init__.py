"""Tasks: for each, the head, the loss and metrics, and pre/post-processing."""
