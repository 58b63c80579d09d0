"""graft: a pretrained vision encoder grafted onto a pretrained LLM through a visual prompt generator."""

import logging
import os

__version__ = "0.1.0"

# DeepSpeed (graft[deepspeed]) warns on every import that it found no GPU: on a CPU machine that
# is the expected case, not news (a filter on its logger, set before it is ever imported)
logging.getLogger("DeepSpeed").addFilter(lambda r: "Setting accelerator to CPU" not in r.getMessage())

# transformers (5.x, with its `kernels` dependency) replaces layers of a model loaded on a GPU by
# "hub kernels", code it downloads from the Hugging Face Hub at run time: offline that load fails
# ("Kernel repository 'kernels-community/rotary' could not verify publisher trust status", seen
# on an H200 at `model.train()`), and online it runs fetched code. graft keeps PyTorch's own
# layers unless the user opts in with USE_HUB_KERNELS=1.
os.environ.setdefault("USE_HUB_KERNELS", "0")
