"""The demo's words: what the synthetic videos are about, and every word their questions and answers use.

The tiny tokenizers (vtt.models.tiny) are trained on VOCABULARY; the videos (vtt.data.synthetic) draw
their shapes and answers from COLOURS and DIRECTIONS.
"""

COLOURS = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0), "yellow": (0, 255, 255)}  # BGR
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
QUESTION = "what colour is the shape and where does it move"
VOCABULARY = sorted(
    {*COLOURS, *DIRECTIONS, *QUESTION.split(), "a", "shape", "moves", "the", "square", "video", "of", "clip"}
)
