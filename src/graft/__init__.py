"""graft: a pretrained vision encoder grafted onto a pretrained LLM through a visual prompt generator."""

__version__ = "0.1.0"
