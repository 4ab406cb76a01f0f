"""Command-line tools run as ``python -m keypointdet.tools.<name>``."""
