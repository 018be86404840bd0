"""Training on Modal's cloud GPUs: the App (modal_app), the container's side (remote), the seam (client),
and the executor that makes a cloud run look like a local one (executor).

May import ``engine.placement.executor`` and ``engine.placement.gpus``, never ``engine.placement.decision``.
"""
