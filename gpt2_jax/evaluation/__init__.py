"""Evaluations of a trained model beyond the validation loss: in-context tasks (HellaSwag, the
DCLM CORE metric), the lm-evaluation-harness adapter and HumanEval."""
