"""Output-length and drift predictors (see docs/ARCHITECTURE.md, section predictor).

Modules: ``metrics`` (pure metrics), ``features`` (admission features), ``drift_data``
(progress rows), ``baselines``, ``lgbm`` (the only lightgbm importer), ``transformer`` (the only
torch/transformers importer), ``paper`` (the paper's classifier and EMA estimator), ``online``
(online recalibration), ``artifacts`` (safe self-describing directories), ``serving`` (the API
policies call), ``datasets`` + ``training`` (the ``python train.py`` pipeline), ``score``
(``python -m predictor.score``). Heavy dependencies are imported only by the module that owns them.
"""
