"""The scheduler service around the engine: Label Studio webhooks in, ranked batches out.

``store.py`` holds the submission log (the source of truth), ``ls_adapter.py`` the Label
Studio edge, ``service.py`` the service itself, ``stats.py`` and ``dashboard.py`` the coverage
figures and page, ``settings.py`` the environment, ``cli.py`` the subcommands.
"""
