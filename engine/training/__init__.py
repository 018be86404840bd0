"""Training: the trainer (``trainer.py``, read top to bottom), its config and checks, the memory plan it
applies, checkpoints, class images, sample grids and their measures, the recommended step, the curves.

May import ``engine.models``, ``engine.prep`` and the shared pieces; never generation, placement or the service.
"""
