"""ggtool: small Mixture-of-Experts checkpoints to GGUF files that run well in llama.cpp."""

__version__ = "0.1.0"
