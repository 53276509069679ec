"""Rendering a trained talking head: pose sources (``poses``), Portrait-Sync blending and
paste-back (``compositing``), mp4 in/out through the bundled ffmpeg (``video``), the
``nerfhead render`` command (``cli``) and the render benchmark (``bench``)."""
