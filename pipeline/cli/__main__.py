"""``python -m pipeline.cli``: the ``cicb`` command, run with this interpreter (``cicb up``
starts the receiver so, whatever ``cicb`` is on PATH)."""

from pipeline.cli import main

main(prog_name="cicb")
