"""The training side: the Celery search task, the Ray Tune driver and trainable, datasets,
recorders, the recommendation, verification and report.

Worker processes, local command-line searches and the benchmarks import it; the API never does.
"""
