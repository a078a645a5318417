"""Tables and plots from metrics JSON files."""
