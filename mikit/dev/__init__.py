"""Developer tools: not used by the notebooks or the grader."""
