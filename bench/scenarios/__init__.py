"""What is measured for a point: today the step scenario (train/infer step time)."""
