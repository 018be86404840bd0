"""Generation: pictures from a run's LoRA under sweeps (``generator.py``), and the sweeps' grammar (``sweeps.py``).

May import ``engine.training`` (to read a run), ``engine.models``, ``engine.prep`` and the shared pieces.
"""
