"""Federation of edge nodes on Flower (docs/federation.md).

* :mod:`.arrays` - naming, checking and merging of the shared arrays (numpy only);
* :mod:`.node_link` - the node side: the control channel served beside the learner thread (torch);
* :mod:`.client_app` - the Flower ClientApp, a thin shim over a node's control channel (no torch);
* :mod:`.server_app` - the Flower ServerApp: a stock flwr strategy plus per-class prototype merging;
* :mod:`.launch` - SuperLink / SuperNode / ``flwr run`` processes on loopback (``edge-node federate``);
* :mod:`.keys` - the CA, SuperLink certificate and SuperNode keys of a deployment without ``--insecure``;
* :mod:`.control` - the node's local control channel (ZeroMQ REP/REQ over the shared codec);
* :mod:`.clientapp_launcher`, :mod:`.supernode`, :mod:`.packing` - what makes a deployed round cost seconds;
* :mod:`.simulation` - fleets of simulated nodes on Flower's Simulation Engine (the same round, in Ray workers).

``edge-node federate``, ``federation-demo``, ``federation-keys`` and ``federation-sim`` live in :mod:`edge_runtime.cli`.

Importing this package imports neither torch nor flwr.
"""
