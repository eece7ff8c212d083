"""The daemon: the running switch, its control commands, reload, metrics and capture."""
