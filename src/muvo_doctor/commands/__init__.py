"""One module per `muvo-doctor` command (see muvo_doctor/cli.py)."""
