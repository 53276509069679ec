"""Evaluation: image/landmark metrics (``metrics``), LPIPS in plain torch (``lpips``), face
landmarks, the lip-sync proxy and SyncNet scores (``lipsync``), the per-frame evaluator and
report files (``report``) and the ``nerfhead evaluate`` command (``cli``)."""
