"""The miniature experiment of the SE paper (python repro/reproduce.py)."""
