"""The gateway's side of the neuron API: `NeuronClient` (the only way to talk to a neuron) and
the `Poller` that turns neurons' answers into the registry's `NodeState`s."""
