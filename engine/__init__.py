"""likeness engine: photo preparation, DreamBooth-LoRA training and generation for SDXL.

Packages by stage, data flowing one way (photos -> prep -> dataset -> training -> run -> generation):
``prep``, ``models``, ``training``, ``generation``, ``placement`` (with ``cloud``), ``service``,
``commands``; the shared pieces every stage may use sit at this level (errors, events, settings,
outputs, grid, progress, quiet, versions). pyproject.toml's import-linter contracts keep the arrows one way.

Importing this package is cheap on purpose: torch, diffusers and friends load at first use,
inside the functions that need them, so `likeness --help` answers instantly.
"""

__version__ = "0.1.0"
