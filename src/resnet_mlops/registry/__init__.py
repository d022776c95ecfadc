"""The MLflow Model Registry: register evaluated models under the champion rule, pull and use them.

The modules are the ``resnet register``, ``pull`` and ``predict`` commands' functions; the model
they register is the training run's classifier (:mod:`resnet_mlops.serving`).
"""
