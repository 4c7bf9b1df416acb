"""Reference models for demos and tests: ``architectures`` (+ signatures), ``tokenizer`` (vocab in ``assets/``),
``features`` (OHLCV -> 110 features), ``synthetic`` data, ``datasets``, brief ``training`` and the ``demo`` registry."""
