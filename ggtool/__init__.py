"""ggtool: small Mixture-of-Experts checkpoints to GGUF files that run well in llama.cpp."""

from pathlib import Path

__version__ = "0.1.0"

# the small OLMoE trained by scripts/train_default_model.py, shipped inside the package
DEFAULT_MODEL = Path(__file__).resolve().parent / "default_model"
