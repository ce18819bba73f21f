"""The training engine every training task runs on (Lightning Fabric underneath).

:mod:`tasks.engine.specs` holds the ``train`` part of a spec (light: no Fabric);
:mod:`tasks.engine.trainer` the :class:`~tasks.engine.trainer.Objective` a task describes and
:func:`~tasks.engine.trainer.train`, which runs it. Nothing is re-exported here, so that
reading a spec never imports Lightning Fabric.
"""
