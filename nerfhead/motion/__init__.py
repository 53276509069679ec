"""Motion a user can read, edit and generate: the per-frame motion file (head pose in the
speaker's canonical frame, the 52 blendshapes, derived blinks), blink and expression control,
head motion generated from audio, and motion/jitter statistics. See docs/motion.md."""
