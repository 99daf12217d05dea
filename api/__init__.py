"""normsearch's HTTP edge: the FastAPI app (``api.app``), its routes, the web UI (``api.ui``) and
a typed Python client (``api.client``).

The API process imports ``service`` only: it sends Celery tasks by name and never loads the
worker, Ray or torch.
"""
