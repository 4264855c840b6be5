"""Prompt datasets for the course's circuits: `mikit.datasets.ioi` builds indirect-object-identification prompts."""
