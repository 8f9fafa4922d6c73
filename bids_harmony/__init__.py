"""bids_harmony: phantom-trained harmonization of multi-site diffusion MRI as a BIDS App."""

__version__ = "0.1.0"
CODE_URL = "https://github.com/bids-harmony/bids_harmony"

__all__ = ["__version__", "CODE_URL"]
