"""`muvo-doctor run`: the wrapped process and its pty or pipes, the telemetry stream from the child, alerts, redaction, safe files."""
