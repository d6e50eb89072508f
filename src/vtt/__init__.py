"""vtt: fine-tune video-language models on GPU clusters (see README.md)."""

__version__ = "0.1.0"
