"""The scheduler service around the engine: Label Studio webhooks in, ranked batches out.

An event travels one way; each part is one module:

* ``intake.py`` — payload -> typed, validated event (pure, no I/O);
* ``store.py`` — the ledger: the submission log (the source of truth), idempotent, versioned;
* the engine (``ranking_scheduler.engine``) — applies the log's submissions;
* ``pool.py`` — the task pool: open tasks, creator threads, spare sizing, boundary questions;
* ``publisher.py`` — the consensus (json/csv) and the Classify predictions;
* ``reconciler.py`` — reads Label Studio and proposes events through intake, like a webhook;
* ``webapp.py`` — the routes and their auth (``auth.py``: the credentials and sessions);
* ``service.py`` — the shell: the worker and tick threads, the queue, the engine lock.

Around them: ``ls_adapter.py`` (the Label Studio edge), ``settings.py`` (the environment),
``geometry.py`` (each image's scan and slice order, from the manifest, for the engine),
``worker_stats.py`` (the worker's own figures), ``stats.py`` and ``dashboard.py`` (the coverage
figures and page), ``cli.py`` (the subcommands).
"""
