"""flip-imaging: XNAT-compatible imaging archive for FLIP trusts."""

__version__ = "0.1.0"
