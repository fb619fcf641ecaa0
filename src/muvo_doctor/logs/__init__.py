"""Log readers for `muvo-doctor audit`: one module per format, all producing (step, signal, value, digits)."""
