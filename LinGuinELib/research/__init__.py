"""Research tools: evaluation, semi-synthetic studies, overview figures, sample data."""
