"""Group level: evaluation of scanner variability."""
