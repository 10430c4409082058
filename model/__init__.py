"""The Qwen3.5 VLM composed from the op backends: `model.load(path, backend="reference" | "kernels")`."""

from .config import ModelConfig, TextConfig, VisionConfig
from .model import Model, load
from .ops import ops_for, placement

__all__ = ["load", "Model", "ModelConfig", "TextConfig", "VisionConfig", "ops_for", "placement"]
