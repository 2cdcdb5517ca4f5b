"""LoRA fine-tuning, on a CPU or a GPU.

- :mod:`feddx.train.recipe`: the one recipe (:func:`~feddx.train.recipe.train_and_save`) and
  its builders (load on some hardware, attach, fit, save with metadata) that every entry point
  calls;
- :mod:`feddx.train.config`: :class:`TrainConfig`, :class:`LoraSpec`, :class:`DPConfig`
  (dataclasses, loadable from YAML/JSON/TOML);
- :mod:`feddx.model.adapter`: attach LoRA, extract/load adapter tensors, save/load adapter
  directories bound to a base-model fingerprint;
- :mod:`feddx.train.trainer`: :func:`train_adapter`, the training loop;
- :mod:`feddx.train.batching`, :mod:`feddx.train.forward`, :mod:`feddx.train.features`,
  :mod:`feddx.train.checkpoint`, :mod:`feddx.train.dp`: its parts (examples and batches, the
  split forward, the frozen-layer activation cache, checkpoints, DP-SGD).

Import the submodules directly; this package imports nothing heavy on its own.
"""
