"""vtt: fine-tune video-language models on GPU clusters (see README.md)."""

from vtt._compat import guard_torchvision_import

__version__ = "0.1.0"

guard_torchvision_import()  # before anything imports transformers' video processors (vtt._compat says why)
