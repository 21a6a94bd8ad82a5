"""Stage 6, monitor: drift of inputs and predictions against a baseline, over time and in
space, kept in a durable SQLite history."""
