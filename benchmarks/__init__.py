"""Benchmarks and studies, beside the product (``slicerank bench TARGET``).

Each module holds one target's harness and its ``main(args)``; ``cli.py`` holds every target's
arguments. These modules import the product packages; no product package imports them (only
the console script, ``slicerank.cli``, registers ``benchmarks.cli``). Results and how they were
taken are in ``docs/BENCHMARKS.md`` and ``docs/bench/``.

| target | module | what it measures |
|---|---|---|
| ``ingest`` | ``ingest.py`` | synth and ingest throughput; the pixel text check's false alarms |
| ``engine`` | ``engine.py`` | engine speed, log replay, the label-efficiency study |
| ``service`` | ``service.py`` | the scheduler behind a real Label Studio under simulated clinicians |
| ``faults`` | ``faults.py`` (+ ``harness.py``) | nothing lost under kills, restarts and lost webhooks |
| ``train`` | ``train.py`` | training throughput, the study protocol on a GPU, /predict latency |
| ``model`` | ``model_study.py`` | training recipes compared on held-out phantom scans |
| ``demo`` | ``demo.py`` | wall time, memory and results of whole demo runs |
| ``analysis`` | ``analysis.py`` | the statistics and the report on synthetic predictions |
| (library) | ``store.py`` | the submission log's appends and replays (``benchmarks.store.bench``) |
"""
