"""Evaluation: judges, attack success rate against compute, over-refusal, monitor quality."""
