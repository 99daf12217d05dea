"""The Celery worker process's entry point for Celery's own command line::

    celery -A worker.main:app worker -Q normsearch.search --pool=solo

Celery finds an app by module attribute, so this module builds one when imported, from the
environment's settings: it is an entry point (like ``normsearch worker``, which builds its app
the same way), never imported by the API or a library. The app loads ``worker.tasks``, whose
search task registers itself with it by name.
"""

from __future__ import annotations

from service.celery_app import make_celery
from service.settings import get_settings

app = make_celery(get_settings())
