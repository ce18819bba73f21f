"""Weights made elsewhere: reading checkpoint files safely and mapping other codes' models onto ours."""
