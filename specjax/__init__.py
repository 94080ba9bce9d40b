"""specjax: SpecInfer's tree-based speculative inference and verification in JAX."""

from specjax.api import Generator, load
from specjax.config import ModelConfig
from specjax.engine import Engine, EngineError, GenerationResult, LoadedModel
from specjax.sampling import SamplingConfig
from specjax.tree import TreeConfig

__all__ = ["Engine", "EngineError", "GenerationResult", "Generator", "LoadedModel", "ModelConfig",
           "SamplingConfig", "TreeConfig", "load"]
__version__ = "0.1.0"
