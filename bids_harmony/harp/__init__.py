"""harp."""
