"""A seeded customer simulator and closed-loop evaluation of Kairos against baselines (pure)."""
