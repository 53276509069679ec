"""Preprocessing: a talking-head video to the dataset folder of DESIGN.md §3.

Each step is a named function with declared inputs and outputs (``preprocess.steps.Step``),
run in-process by ``preprocess.driver``, checked after it runs and recorded in the dataset's
``manifest.json``; a step whose inputs and settings are unchanged is skipped on a rerun.
"""
