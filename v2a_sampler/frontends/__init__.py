"""Front ends: the ``v2a-sample`` command line (:mod:`.cli`), data-set scale manifest runs (:mod:`.datagen`) and the
``v2a-eval`` evaluation command (:mod:`.evaluate`). They use pipelines only through the contract of
:mod:`v2a_sampler.pipelines.base`. ``v2a_sampler.cli``, ``v2a_sampler.datagen`` and ``v2a_sampler.evaluate`` are
their documented short paths."""
