"""Whole jobs built from the library: the demo and the VPG-C ablation (the CLI only parses and calls)."""
