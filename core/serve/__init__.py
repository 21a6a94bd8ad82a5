"""Stage 5, serve: warm models shared by a process, and the timed runs the dashboard shows."""
