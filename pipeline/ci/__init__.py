"""CI's queues and workflows: where their callbacks go, and pointing them at the receiver.

``queues`` lists every queue of each kind (media, picture, document, speech, AI) and every
workflow that carries its own callback, in the buckets of ``CICB_CI_BUCKETS``, and judges
where each one's notifications go. ``connect`` plans and makes the change that points them at
this receiver. ``cicb ci queues`` and ``cicb ci connect`` are their commands; reconcile
learns its queues from ``queues`` too.
"""
