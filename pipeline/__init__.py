"""cicb's library: everything between the raw callback body and the Celery tasks."""
