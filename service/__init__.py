"""What the API and the worker share: settings, the database, repositories, the job spec, the
job lifecycle and its business rules, and the Celery app factory.

No torch, Ray, ``worker`` or ``api`` imports, and of ``sn_core`` only its torch-free
``sn_core.vocabulary``, so the API process stays light.
"""
