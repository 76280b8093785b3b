"""Hooks into training loops: callbacks that commit while a framework trains (Keras's ``fit``)."""
