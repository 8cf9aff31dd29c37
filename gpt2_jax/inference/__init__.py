"""Decoding a trained model."""
