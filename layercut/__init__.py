"""layercut: find the decoder layers a model can lose, remove them cleanly, and measure the cost."""

__version__ = "0.1.0"
