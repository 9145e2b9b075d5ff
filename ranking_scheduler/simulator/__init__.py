"""Simulated raters and the label-efficiency study (``slicerank simulate``, ``bench engine``).

``raters.py`` holds the rater noise model, ``simulate.py`` the study loop, ``bench.py`` the
engine benchmark and ``cli.py`` the subcommands.
"""
