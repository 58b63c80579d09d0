"""`graft report`: eval run folders, expert runs and demo summaries side by side, as markdown and
a self-contained HTML page (``build.py``; the page in ``page.py``, the results table's columns in
``columns.py``, the demo's charts in ``demo.py``, the pipelines' comparison in ``expert.py``, what
all are made of in ``model.py``)."""
