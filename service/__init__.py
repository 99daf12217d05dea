"""What the API and the worker share: settings, the database, repositories, the job spec, the
job lifecycle and its business rules, and the Celery app definition.

No torch, Ray, ``sn_core``, ``worker`` or ``api`` imports, so the API process stays light.
"""
