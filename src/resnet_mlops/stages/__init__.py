"""One module per dvc.yaml stage: the only place that combines the packages below.

Each module's import closure is exactly its stage's code deps in dvc.yaml (a test checks it),
so editing a module reruns only the stages that import it. The CLI parses flags and calls
these; it is not a dep (it decides no output). ``import_runs`` is the one module without a
stage: ``resnet import-run`` logs run folders trained elsewhere as the train stage logs its own.
"""
