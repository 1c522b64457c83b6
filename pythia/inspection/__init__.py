"""Looking inside a model: per-token probabilities, attention maps, and SVG loss plots."""
