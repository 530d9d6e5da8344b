"""What every family, task and backend shares: parameters, the model card, networks, the engine directory, the
pipeline base with its guidance, and the video file."""
