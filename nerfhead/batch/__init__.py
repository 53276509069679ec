"""``nerfhead batch SPEAKERS.yaml --out DIR``: many speakers through ``nerfhead run``'s stages.

Modules, in the order a batch uses them:

- ``spec``: the speakers file, validated into one ``SpeakerSpec`` per speaker;
- ``stages``: one stage of one speaker (preprocess, a training stage, render, evaluate, the
  driven render), run through ``nerfhead.pipeline``'s functions with its output captured in
  ``DIR/<name>/logs/``; this is the body of every Ray task;
- ``progress``: the live progress each stage reports (its tqdm bars) to a status board;
- ``executors``: where stages run: Ray tasks with declared resources on a local Ray or an
  existing cluster, or this process one stage after another (without Ray);
- ``scheduler``: the driver: one chain of stages per speaker, retries of lost workers, Ctrl-C,
  the per-speaker state in ``DIR/<name>/batch.json``;
- ``display``: the live status table;
- ``summary``: ``DIR/summary.md`` and ``DIR/summary.csv``, one row per speaker;
- ``lock``: one batch at a time per output folder.

docs/batch.md is the user's guide (speakers file, resources, clusters).
"""
