"""The console: find any callback by job id, see what happened to it, act on dead letters.

A small server-rendered web app (Starlette and Jinja2, no JavaScript) on top of the archive,
the dead-letter queue, the route table, the queue depths and the reconcile passes. ``cicb
console`` runs it; everything but the sign-in page needs a session.
"""
