"""`graft report`: eval run folders, expert runs and demo summaries side by side, as markdown and
a self-contained HTML page (``build.py``; the demo's charts in ``demo.py``, the pipelines'
comparison in ``expert.py``, what both are made of in ``model.py``)."""
