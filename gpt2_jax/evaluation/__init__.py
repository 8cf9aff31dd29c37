"""Evaluation of a trained model beyond validation loss."""
