"""The service: the lifecycle and engine loop, micro-batches, housekeeping, checkpoint and fine-tune
schedules, systemd notification. Imports ingest, outputs, settings and the leaves; never commands.
Kept free of imports so that ``python -m daemon.service.finetuner`` (the fine-tune worker) stays light."""
