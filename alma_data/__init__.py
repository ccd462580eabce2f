"""alma-data: synthetic alignment data after ALMA (Yasunaga et al., 2024)."""

__version__ = "0.1.0"
