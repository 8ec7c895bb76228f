"""The model: safety modules, their configuration, and `SafeLlava` (a frozen LLaVA-1.5 with the modules attached).

Only this package knows the base model's structure: `llava/` loads and converts LLaVA checkpoints and renders
their conversations; `safe_llava.py` offers the doors the rest of the project uses.

The public names (``__init__.pyi``) are imported on first use, so importing a light module of this
package does not import torch or transformers.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
