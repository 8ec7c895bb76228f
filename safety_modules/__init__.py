"""Safety modules for a frozen LLaVA-v1.5: projector, safety tokens, safety head, gate, training, scanning.

The public names (listed in ``__init__.pyi``) are imported on first use, so ``import safety_modules`` and
``safevlm --help`` do not import torch or transformers.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
