"""dmri."""
