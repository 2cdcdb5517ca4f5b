"""Federated fine-tuning with Flower 1.42 (Message API): institutions train one LoRA adapter
together, and only adapters and numbers leave a node.

The Flower app (declared in ``pyproject.toml``, ``flwr run . <connection>``):

- :mod:`.server_app`: the ServerApp round loop (sampling, validation filter, aggregation,
  centralised evaluation, checkpoints, history, plots);
- :mod:`.client_app`: the ClientApp (local training on the node's own cases). Its module
  docstring lists the node-config keys a SuperNode takes (``data-source``, ``data-path``,
  ``state-dir``, ...);
- :mod:`.config`: the run config both read from ``context.run_config``.

The pieces: :mod:`.task` (model, data, evaluation shared by both apps), :mod:`.strategies`
(Flower's strategies by name), :mod:`.guard` (reply validation), :mod:`.codec` (records,
compression, byte counts), :mod:`.privacy` (DP accounting; why no SecAgg+),
:mod:`.checkpoint`, :mod:`.history`. Running it: :mod:`.simulation` (Flower's simulation
runtime in a private sandbox, ``feddx federate``), :mod:`.inprocess` (the same apps in one
process, for tests), :mod:`.experiments` (the results table), and :mod:`.deploy` (real
SuperLink/SuperNode processes with TLS and node authentication).
"""
