"""``graft serve``: an OpenAI-compatible chat-completions server and web chat page for a model.

``settings`` (one dataclass), ``errors`` (OpenAI's error shape), ``media`` (image URLs to images,
safely), ``protocol`` (a request's JSON to a checked ``ChatRequest``), ``engine`` (the worker that
owns the model and batches), ``app`` (the ASGI routes), ``page`` (the web page).
"""
