"""What the user sees: the text report, the live dashboard, the terminal charts."""
