"""Sweeps: grids of overrides x seeds of ordinary runs, resumable, summarised with error bars and a verdict.

A study is a YAML file (``studies/*.yaml``) or a command line::

    selfsup sweep studies/projection_head.yaml
    selfsup sweep recipes/simclr_fashion_mnist.yaml method_args.temperature=0.1,0.2,0.5 --seeds 3

Each grid point x seed is an ordinary ``selfsup pretrain`` run in ``<out>/<point>/seed<k>`` (its own
``results.json``, checkpoint and page), so a sweep is resumable for free: a finished run is skipped,
a killed one is continued with ``--resume`` (exactly, as any run), a new one started; a finished run
made by another command than the study now gives it (its overrides or recipe edited since) is refused,
by the sweep and by its summary, naming the run, rather than read as if it were. Runs go one at
a time by default (``--jobs N`` for more), or to a cluster through submitit (``--executor slurm``),
the scheduler library the DINO and MoCo v3 code bases use. The summary reads the runs' files only:
per point and metric the mean, the sample standard deviation and the 95% interval of the mean
(Student's t), beside the floor (the same evaluation at random initialisation), one plot per metric
with the intervals as error bars, and the claim's verdict in words. Every claim is judged by one rule
(:func:`selfsup.sweep.verdict_of`): the differences between the runs that share a seed, and whether the
95% interval of their mean lies beyond zero: ``reproduces``, ``does not reproduce`` (beyond zero the
other way), ``inconclusive`` (the interval holds zero, or fewer than 3 seeds) or ``incomplete`` (a
planned run has no finite score: not run, or failed).

The study file::

    name: projection_head
    claim: "A nonlinear projection head improves the representation before it (SimCLR section 4.2)."
    recipe: recipes/simclr_fashion_mnist.yaml
    overrides: [data.max_samples=8192, train.epochs=8]      # every run
    points:                                                  # or grid: {key: [values], ...} (all combinations)
      - {name: nonlinear, overrides: [method_args.proj_hidden_dim=512]}
      - {name: linear, overrides: [...]}
    seeds: 3                                                 # or a list [0, 1, 2]
    metrics: [knn, linear, fewshot_5way_1shot]               # the first one decides the verdict
    finetune: [0.01]                                         # optional: 1%-label fine-tuning of every run
    verdict: {best: nonlinear}                               # or {order: [a, b, c]} or {better: a, than: [b, c]}
                                                             # (+ metric: M, lower: true where lower is better)
                                                             # or {above_floor: a}: a over its own floors
                                                             # or {point: a, beats: M2}: a's metric above its M2
                                                             # or a list of them, each with its own claim: text
    finetune_steps: 100                                      # optional: fine-tuning steps (default 200)
    runs: other_study                                        # optional: share that study's run folders

A point may name its own ``recipe`` (``{name: rotation, recipe: recipes/rotation_fashion_mnist.yaml}``),
for studies that compare methods each at its own recipe, and its own ``seeds`` (``{name: a, seeds: 8}``:
more seeds where a claim's intervals need them, without rerunning the other points). ``runs`` lets two studies read (and finish)
the same runs, e.g. one summarising the frozen evaluations and one adding fine-tuning to them.

Read in this order: ``study`` (the file read, checked and expanded into runs), ``runner`` (the runs
started), ``scores`` (their numbers per point with intervals, and each claim's verdict) and ``summary``
(the page, its plots and the list of studies).
"""

from __future__ import annotations

from selfsup.sweep.runner import commands, execute
from selfsup.sweep.scores import _scores, collect, statistics, study_word, t_quantile, verdict, verdict_of, verdicts
from selfsup.sweep.study import (METRICS, VALUE_METRICS, Point, Run, Study, expand, grid_points, load_study,
                                 study_from_command_line)
from selfsup.sweep.summary import page, plot, study_list, summarise

__all__ = ["METRICS", "VALUE_METRICS", "Point", "Run", "Study", "_scores", "collect", "commands", "expand", "execute",
           "grid_points", "load_study", "page", "plot", "statistics", "study_from_command_line", "study_list", "study_word",
           "summarise", "t_quantile", "verdict", "verdict_of", "verdicts"]
