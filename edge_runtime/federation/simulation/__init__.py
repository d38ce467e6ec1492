"""Fleets of simulated edge nodes on Flower's Simulation Engine (``edge-node federation-sim``; docs/federation.md).

* :mod:`.plan` - who streams which classes and samples per round, who is down or late (numpy only);
* :mod:`.node` - one simulated node: the daemon's ``Learner`` and round bookkeeping in a state folder;
* :mod:`.apps` - the ClientApp (restores, learns, replies) and the deployed ServerApp's round;
* :mod:`.run` - the driver (``flwr.simulation.run_simulation``) and the isolated / single-node references.

Importing this package imports neither torch nor flwr.
"""
