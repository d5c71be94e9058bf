"""Simulated ML worlds with real incidents: the demo, test and accuracy-benchmark data."""
