"""rlrf-hub: Reinforcement Learning from Reflective Feedback, end to end on the Hugging Face stack."""

__version__ = "0.1.0"
