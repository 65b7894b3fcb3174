"""cicb's Celery side: the app, its queues, and thin tasks over ``pipeline``."""
