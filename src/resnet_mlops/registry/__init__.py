"""The MLflow Model Registry: register evaluated models under the champion rule, pull and use them.

``classifier_model`` is the registered pyfunc's own code and imports nothing from this package;
the other modules are the ``resnet register``, ``pull`` and ``predict`` commands' functions.
"""
