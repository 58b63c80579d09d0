"""Whole jobs built from the library: the demo, the VPG-C ablation and the expert-model baseline
(the CLI only parses and calls)."""
