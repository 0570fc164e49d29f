"""The passes of the conversion pipeline, one per module."""
