"""The worker process: claims jobs from the database and runs them on the engine."""
