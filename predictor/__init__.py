"""Output-length and drift predictors (see docs/ARCHITECTURE.md, section predictor).

Modules: ``metrics`` (pure metrics), ``features`` (admission features), ``drift_data``
(progress rows), ``baselines``, ``lgbm`` (LightGBM estimators; ``lgbm_boosters``, the only
lightgbm importer; ``lgbm_artifacts``), ``transformer`` (MiniLM estimators; with
``transformer_model``, ``transformer_train`` and ``transformer_artifacts`` the only
torch/transformers importers), ``paper`` (the paper's classifier and EMA estimator), ``online``
(online recalibration), ``artifacts`` (safe self-describing directories), ``serving`` (the API
policies call), ``datasets`` + ``training`` + ``training_drift`` (the ``python train.py``
pipeline), ``score`` (``python -m predictor.score``). Heavy dependencies are imported only by the module that owns them.
"""
