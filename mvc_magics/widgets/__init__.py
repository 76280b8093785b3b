"""ipywidgets panels and matplotlib figures over API results; no logic of their own."""
