"""synthdet: tell real photographs from AI-generated images under real-world conditions."""

__version__ = "0.1.0"
