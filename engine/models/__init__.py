"""The models a run is made of: SDXL base models (hub, folder, single file, the built-in tiny one), LoRA
files in every layout other tools read, and the torch device they run on.

Imports only the shared pieces (``engine.errors``, ``engine.settings``, ``engine.quiet``); torch loads inside functions.
"""
