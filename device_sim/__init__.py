"""device-sim: simulated UAV / sensor clients that replay data sets as streams to an edge node."""
