"""``python -m graft.cli`` (and ``accelerate launch -m graft.cli``) run the same entry point."""

from graft.cli import main

main()
