"""Evaluation: metric accumulators, unseen-class routing, the evaluation pass and its report."""
