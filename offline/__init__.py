"""Batch jobs: click-log generation, item2vec training, tuning, loading into Redis, evaluation."""
