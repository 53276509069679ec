"""``nerfhead batch SPEAKERS.yaml --out DIR``: many speakers through ``nerfhead run``'s stages.

Modules, in the order a batch uses them:

- ``spec``: the speakers file, validated into one ``SpeakerSpec`` per speaker;
- ``stages``: one stage of one speaker (preprocess, a training stage, render, evaluate, the
  driven render), run through ``nerfhead.pipeline``'s functions with its output captured in
  ``DIR/<name>/logs/``; this is the body of every Ray task;
- ``progress``: the live progress each stage reports (its tqdm bars) to a status board;
- ``scheduler``: the stages as Ray tasks with declared resources (or one after another without
  Ray), retries of lost workers, Ctrl-C, the per-speaker state in ``DIR/<name>/batch.json``;
- ``display``: the live status table;
- ``summary``: ``DIR/summary.md`` and ``DIR/summary.csv``, one row per speaker.

docs/batch.md is the user's guide (speakers file, resources, clusters).
"""
