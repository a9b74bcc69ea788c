"""Training engine: task-table datasets, fundus augmentation, the loop (resume, DDP), CLI."""
