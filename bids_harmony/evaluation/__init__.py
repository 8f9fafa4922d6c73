"""Evaluation of harmonization: against simulated ground truth, and (later) group statistics."""
