"""likeness engine: photo preparation, DreamBooth-LoRA training and generation for SDXL.

Importing this package is cheap on purpose: torch, diffusers and friends load at first use,
inside the functions that need them, so `likeness --help` answers instantly.
"""

__version__ = "0.1.0"
