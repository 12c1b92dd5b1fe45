"""Training loop, evaluation, feature cache, precision and seeding."""
