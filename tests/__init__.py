"""The test suite: ``unit`` (pure and fast), ``integration`` (real components), ``e2e`` (the
whole pipeline, the flows, the stacks); shared helpers in ``support``."""
