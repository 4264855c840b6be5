"""Prompt datasets for the course's circuits: `mikit.datasets.ioi` builds indirect-object-identification prompts,
`mikit.datasets.greater_than` Greater-Than prompts ("The war lasted from the year 1732 to the year 17")."""
