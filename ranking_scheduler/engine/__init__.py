"""The pure rating/ranking engine: no network, no disk, deterministic for a seed.

:class:`RankingEngine` (``ranking.py``) is the facade the service and the simulator call; it
validates input, keeps the open batches and hands the work to its parts, one module each:

=================  =====================================================================
``ranking.py``     the facade ``RankingEngine``: constructor, open batches, validation
``strategies.py``  the policies ``paper``, ``ranking`` (= ``bayes``), ``single``,
                   ``hybrid``, ``random``: which model, which tasks, when to stop and why
                   (a new strategy is a new small class here)
``chooser.py``     the task chooser: what one more view or label is worth (to whom),
                   the batch worth most, per second of each rater's measured time
``cuts.py``        the cut finder: the two class cuts, boundary questions and answers
``posterior.py``   the posterior: rankings and single labels in; scores, order, class
                   probabilities, misclassification, classes, provenance, misreads out
``glicko.py``      the study's Glicko-2 ratings (``paper``)
``bayes.py``       the ranked-probit posterior with per-rater noise, persistent per-slice
                   errors and ordered-probit labels (every strategy but ``paper``)
``stacks.py``      its per-scan Gaussian-process prior, stack layout, monotone classes
``boundary.py``    the maths of one cut's posterior on the list (probabilistic bisection)
=================  =====================================================================

Imports run one way (``tests/slicerank/test_layering.py`` pins them)::

    ranking  ->  strategies  ->  chooser, cuts  ->  posterior  ->  glicko, bayes, stacks
                                      \\-> boundary (maths)

The chooser and the cut finder are siblings: neither imports the other (the chooser reads the
cuts it is handed). Nothing imports ``ranking.py`` but this ``__init__``.
"""

from __future__ import annotations

from ranking_scheduler.engine.ranking import STRATEGIES, RankingEngine, Task

__all__ = ["STRATEGIES", "RankingEngine", "Task"]
