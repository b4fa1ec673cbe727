"""``asasnn`` sub-commands owned by the training package: ``train``, ``eval`` (and ``export``).

Each module exposes ``add_arguments(parser)`` and ``run(args) -> int``; :mod:`asasnn.cli` imports
the one chosen.
"""
