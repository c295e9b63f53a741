"""Training loops of the transformer models (:mod:`predictor.transformer`).

* ``fit_head``: AdamW on the pinball loss of a :class:`QuantileHead` over precomputed
  features, early-stopped on a validation set, then the split-conformal p90 shift;
* ``finetune_encoder``: the ``finetune`` mode's joint steps of the MiniLM encoder and a
  temporary head, before the real head is fitted on the tuned encoder's embeddings.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from predictor.features import _prompts, prompt_tokens_of
from predictor.transformer_model import (
    EMB_DIM,
    N_DENSE,
    QuantileHead,
    head_predict,
    progress_enabled,
)


def pinball(pred: torch.Tensor, target: torch.Tensor, qs: tuple[float, ...]) -> torch.Tensor:
    """Mean pinball (quantile) loss summed over the quantiles ``qs``."""
    # pred (b, 2) log-length quantiles, target (b,)
    loss = 0.0
    for j, q in enumerate(qs):
        e = target - pred[:, j]
        loss = loss + torch.maximum(q * e, (q - 1) * e).mean()
    return loss


HEAD_THREADS = 1  # small MLP steps: one thread is ~4x faster than two on a shared 2-core CPU


@contextmanager
def _head_threads() -> Iterator[None]:
    """Run the head's training on ``HEAD_THREADS`` torch threads, restored afterwards: measured
    2.8 s/epoch on one thread vs 10.9 s on two for 8k rows on the shared dev machine (OpenMP
    contention)."""
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(HEAD_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(prev_threads)


def _train_head(
    head: QuantileHead,
    dense: torch.Tensor,
    ids: torch.Tensor,
    y: torch.Tensor,
    ev: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    qs: tuple[float, ...],
    seed: int,
    patience: int,
    desc: str,
) -> int:
    """Adam on the pinball loss; keeps the best epoch on ``ev``. Returns the best epoch count."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_state, bad, n = float("inf"), None, 0, len(y)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    done, best_epoch = 0, epochs
    for _ in tqdm(range(epochs), desc=desc, disable=not progress_enabled()):
        done += 1
        head.train()
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            b = perm[i : i + batch_size]
            loss = pinball(head(dense[b], ids[b]), y[b], qs)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        if ev is not None:
            head.eval()
            with torch.no_grad():
                v = float(pinball(head(ev[0], ev[1]), ev[2], qs))
            if v < best - 1e-4:
                best, bad, best_epoch = v, 0, done
                best_state = {k: t.clone() for k, t in head.state_dict().items()}
            else:
                bad += 1
                if bad >= patience:
                    break
    if best_state is not None:
        head.load_state_dict(best_state)
    head.eval()
    return best_epoch if ev is not None else done


def p90_shift(head: QuantileHead, ev: tuple[torch.Tensor, ...], q: float) -> float:
    """Shift (log tokens) that makes the upper quantile cover ``q`` of the validation rows
    ``ev = (dense, ids, log_target)``: split-conformal calibration of the p90 head."""
    lq = head_predict(head, ev[0], ev[1])
    return float(np.quantile(ev[2].double().numpy() - lq[:, 1], q))


def fit_head(
    est: Any,
    dense: torch.Tensor,
    ids: torch.Tensor,
    target: torch.Tensor,
    ev: tuple[torch.Tensor, ...] | None,
    batch_size: int,
    desc: str,
) -> int:
    """Train ``est.head_`` with ``est``'s hyperparameters (early stopping on ``ev``) and set
    ``est.p90_shift_`` (conformal p90 shift on ``ev`` when ``est.calibrate``); epochs run."""
    with _head_threads():
        epochs = _train_head(
            est.head_,
            dense,
            ids,
            target,
            ev,
            epochs=est.epochs,
            batch_size=batch_size,
            lr=est.lr,
            weight_decay=est.weight_decay,
            qs=tuple(est.quantiles),
            seed=est.random_state,
            patience=est.patience,
            desc=desc,
        )
    est.p90_shift_ = (
        p90_shift(est.head_, ev, est.quantiles[1]) if ev is not None and est.calibrate else 0.0
    )
    return epochs


def finetune_encoder(est: Any, X: pd.DataFrame, y: np.ndarray) -> None:
    """Joint training of ``est``'s encoder + a temporary head for ``est.max_steps`` steps
    (batches of ``est.batch_size`` prompts drawn with ``est.random_state``)."""
    enc = est.featurizer_.encoder
    ids = torch.from_numpy(est.featurizer_.id_codes(X).astype(np.int64))
    pt = prompt_tokens_of(X)
    dense_extra = torch.from_numpy(
        np.column_stack(
            [
                np.array([p is not None for p in _prompts(X)], np.float32),
                np.log1p(np.where(np.isnan(pt), 0.0, pt)).astype(np.float32),
            ]
        ).astype(np.float32)
    )
    head = QuantileHead(EMB_DIM + N_DENSE, est._id_sizes(), est.id_dim, est.hidden, est.dropout).to(
        enc.device
    )
    with torch.no_grad():
        head.bias0.fill_(float(np.median(np.log(y))))
    opt = torch.optim.AdamW(
        [
            {"params": enc.model.parameters(), "lr": est.encoder_lr},
            {"params": head.parameters(), "lr": est.lr},
        ],
        weight_decay=est.weight_decay,
    )
    prompts = [p or "" for p in _prompts(X)]
    yt = torch.from_numpy(np.log(y).astype(np.float32))
    g = np.random.default_rng(est.random_state)
    enc.model.train()
    for _ in tqdm(range(est.max_steps), desc="finetune", disable=not progress_enabled()):
        b = g.choice(len(prompts), size=min(est.batch_size, len(prompts)), replace=False)
        pooled = enc.pooled(enc.tokens([prompts[i] for i in b]))
        dense = torch.cat([pooled, dense_extra[b].to(enc.device)], dim=1)
        loss = pinball(
            head(dense, ids[b].to(enc.device)), yt[b].to(enc.device), tuple(est.quantiles)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    enc.model.eval()
