"""Code that an exported folder carries for transformers to run (``trust_remote_code=True``).

Its modules import torch and transformers only, and each other relatively, so ``graft export-hf``
ships them as they are and transformers loads them without graft installed. graft imports them
too, so the function a connector computes has one home whether graft or transformers runs it.
"""
