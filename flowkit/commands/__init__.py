"""Subcommands of the ``flowkit`` CLI, one module each (see ``flowkit.cli``)."""
