"""The ``pixport`` command."""
