"""Prefect flows that run the DVC stages as tasks (the pipeline flow, the scheduled retraining
flow). DVC decides what is up to date; no stage logic lives here."""
