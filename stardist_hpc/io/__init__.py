"""Files: images, model folders, the candidate file (and the original format), checkpoints
and the label file; and how they are published and kept apart from the inputs."""
