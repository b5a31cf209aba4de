"""`python -m pgflow_trio ...`: commands, target loading and the demo. The top layer: it may import everything."""
