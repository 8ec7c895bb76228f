"""`safevlm serve`: an OpenAI-compatible guarded server (moderations, chat), dynamic batching, proxy mode, web page.

`model_runner` is the only module that calls the model; `batching` owns the one thread that does.
"""

from .app import ServeConfig, create_app
from .inputs import InputLimits
from .model_runner import LlavaRunner, ModelRunner, Sampling, VisionRunner

__all__ = ["InputLimits", "LlavaRunner", "ModelRunner", "Sampling", "ServeConfig", "VisionRunner", "create_app"]
