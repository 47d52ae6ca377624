"""Training-only code (the `train` extra): nothing in the inference core imports it."""
