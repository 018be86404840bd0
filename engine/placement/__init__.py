"""Placement: where a training run goes (``decision.py``: this GPU or Modal's, with time and cost), the GPUs
it can go to (``gpus.py``), and the executors that run it there (``executor.py``, ``cloud/``).

May import ``engine.training``, ``engine.models`` and the shared pieces; within it, decision > cloud > executor, gpus.
"""
