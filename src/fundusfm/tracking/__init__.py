"""MLflow mirror of the study's result files (the files stay the source of truth).

* :mod:`~fundusfm.tracking.records`: result files -> run records (pure, no MLflow);
* :mod:`~fundusfm.tracking.store`: MLflow writes (lock, retry, per-job logging, sync);
* :mod:`~fundusfm.tracking.registry`: a release in the model registry;
* :mod:`~fundusfm.tracking.cli`: ``fundusfm sync-mlflow`` and ``fundusfm register``.
"""
