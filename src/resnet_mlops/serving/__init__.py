"""The model users register, pull and serve: a pyfunc taking encoded images, and its files.

``classifier_model`` is the pyfunc's own code and imports nothing from this project (MLflow
logs the file with the model); ``package`` writes the files it loads. A training run logs it
(``tracking``) and ``resnet register`` registers that logged model (``registry``), both from
here, so the network is exported once, at the end of training.
"""
