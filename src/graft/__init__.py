"""graft: a pretrained vision encoder grafted onto a pretrained LLM through a visual prompt generator."""

import logging

__version__ = "0.1.0"

# DeepSpeed (graft[deepspeed]) warns on every import that it found no GPU: on a CPU machine that
# is the expected case, not news (a filter on its logger, set before it is ever imported)
logging.getLogger("DeepSpeed").addFilter(lambda r: "Setting accelerator to CPU" not in r.getMessage())
