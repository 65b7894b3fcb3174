"""The built-in actions a route can chain, as plain functions the worker's tasks call.

- ``notify``, ``targets`` and ``signing``: tell webhooks and chat robots about an event.
- ``copying`` and ``s3``: copy a job's outputs server side through the S3 API.
- ``resubmit`` and ``cos``: submit a failed job again through CI's API.

They take events and clients, and raise ``TransientError`` or ``PermanentError``; they may
import ``pipeline.parsing``, errors and logs, never the brokers, the receiver or ``workers``.
"""
