"""The MBS paper's offline protocol (Experiment B): pre-train, score, keep a ratio, re-train, evaluate.

1. pre-train a model for R epochs on the full training set (snapshots at several R in one run);
2. score every training sample with the pre-trained model:
   * ``el2n``: ||softmax(f(x)) - onehot(y)||_2, keep the smallest;
   * ``grand``: per-sample gradient norm of the fusion head, keep the largest;
   * ``mbs``: p_audio / p_video with prototype confidences (prototypes = class means of each
     modality's embeddings over the training set), Algorithm 1 over the whole set with the
     median as centre (the paper's practical strategy);
   * ``bmmal``: Shapley-weighted gradient embeddings, k-means++ seeding;
   * ``random``: a seeded uniform subset; ``base``: everything;
3. keep ``ratio`` of the training set (a KEPT fraction: the paper's tables speak of pruning);
4. train a fresh model (same seed) for E epochs on the kept subset;
5. evaluate on the test set (fused, audio-only and visual-only accuracy).

Plain supervised training here (Adam, cross-entropy on the fused logits, shuffled mini-batches):
the protocol compares selection criteria, not the streaming learner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_runtime.batch import collate
from edge_runtime.config import Config
from edge_runtime.model import build_model
from edge_runtime.scoring.el2n import el2n
from edge_runtime.scoring.grand import grand_last_layer
from edge_runtime.scoring.mbs import mbs
from edge_runtime.scoring.shapley import contributions, gradient_embedding, kmeans_pp, modality_weights, shapley_two_modalities
from edge_runtime.selection.mbs import select as mbs_select
from edge_runtime.wire import Sample

STRATEGIES = ("el2n", "grand", "mbs", "bmmal", "random", "base")


@dataclass
class Outputs:
    """Outputs of a model over a sample list, in order."""

    logits: torch.Tensor
    audio_logits: torch.Tensor
    video_logits: torch.Tensor
    z_audio: torch.Tensor
    z_video: torch.Tensor
    labels: torch.Tensor


@torch.no_grad()
def predict(model: nn.Module, samples: Sequence[Sample], batch_size: int = 256) -> Outputs:
    model.eval()
    parts = []
    for i in range(0, len(samples), batch_size):
        b = collate(list(samples[i : i + batch_size]))
        o = model(*b.inputs())
        parts.append((*o, b.labels))
    model.train()
    return Outputs(*(torch.cat(p) for p in zip(*parts)))


def accuracy(model: nn.Module, samples: Sequence[Sample]) -> dict[str, float]:
    """Fused, audio-only and visual-only accuracy on ``samples``."""
    o = predict(model, samples)
    y = o.labels
    return {
        "accuracy": float((o.logits.argmax(1) == y).float().mean()),
        "audio_accuracy": float((o.audio_logits.argmax(1) == y).float().mean()),
        "video_accuracy": float((o.video_logits.argmax(1) == y).float().mean()),
    }


def train_epochs(model: nn.Module, samples: Sequence[Sample], epochs: int, config: Config, seed: int,
                 batch_size: int = 32, after_epoch: Callable[[int, nn.Module], None] | None = None) -> nn.Module:
    """Plain supervised training: Adam (``training.lr``), CE on the fused logits, seeded shuffles."""
    opt = torch.optim.Adam(model.parameters(), lr=config.training.lr, weight_decay=config.training.weight_decay)
    rng = np.random.default_rng(seed)
    model.train()
    for epoch in range(epochs):
        order = rng.permutation(len(samples))
        for i in range(0, len(order), batch_size):
            b = collate([samples[j] for j in order[i : i + batch_size]])
            loss = F.cross_entropy(model(*b.inputs()).logits, b.labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.training.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.training.grad_clip)
            opt.step()
        if after_epoch is not None:
            after_epoch(epoch + 1, model)
    return model


def fresh_model(config: Config, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(config.model)


def prototype_confidence(z: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``softmax_k(-||z - c_k||)[y]`` with ``c_k`` the mean of class k's embeddings in ``z``."""
    sums = torch.zeros(num_classes, z.shape[1], dtype=z.dtype).index_add_(0, y, z)
    counts = torch.bincount(y, minlength=num_classes).to(z.dtype)
    present = counts > 0
    centres = sums[present] / counts[present, None]
    col = torch.cumsum(present.long(), 0)[y] - 1  # column of each label among the present classes
    logits = -torch.cdist(z, centres)
    return F.softmax(logits, dim=1).gather(1, col[:, None]).squeeze(1)


def select_subset(strategy: str, ratio: float, model: nn.Module, samples: Sequence[Sample], seed: int,
                  num_classes: int) -> np.ndarray:
    """Indices (into ``samples``) kept by ``strategy`` at KEPT fraction ``ratio``."""
    n = len(samples)
    k = max(1, int(math.floor(ratio * n)))
    if strategy == "base":
        return np.arange(n)
    if strategy == "random":
        return np.sort(np.random.default_rng([seed, 0x5E1]).choice(n, size=k, replace=False))
    o = predict(model, samples)
    if strategy == "el2n":
        score = el2n(o.logits, o.labels)
        return np.sort(torch.argsort(score, stable=True)[:k].numpy())
    if strategy == "grand":
        score = grand_last_layer(model.fusion, o.z_audio, o.z_video, o.labels)
        return np.sort(torch.argsort(-score, stable=True)[:k].numpy())
    if strategy == "mbs":
        pa = prototype_confidence(o.z_audio, o.labels, num_classes)
        pv = prototype_confidence(o.z_video, o.labels, num_classes)
        # Algorithm 1 keeps K = floor(rho n / 2) on each side of the median: about rho n in total.
        return np.sort(mbs_select(mbs(pa, pv), ratio).numpy())
    if strategy == "bmmal":
        model.eval()
        with torch.no_grad():
            d_a, d_v, probs = shapley_two_modalities(lambda a, v: model.fusion(a, v)[0], o.z_audio, o.z_video)
        model.train()
        w_a, w_v = modality_weights(*contributions(d_a, d_v))
        emb = gradient_embedding(probs, o.z_audio, o.z_video, w_a, w_v)
        return np.sort(kmeans_pp(emb, k, torch.Generator().manual_seed(seed)).numpy())
    raise ValueError(f"unknown strategy {strategy!r}; choose one of {list(STRATEGIES)}")


def run_protocol(train: Sequence[Sample], test: Sequence[Sample], config: Config, pretrain_epochs: Sequence[int],
                 ratios: Sequence[float], strategies: Sequence[str], epochs: int, seed: int = 0,
                 on_result: Callable[[dict], None] | None = None, skip: Callable[[dict], bool] | None = None) -> list[dict]:
    """Experiment B for one seed: rows of (R, strategy, ratio, kept, accuracies).

    ``skip(row_key)`` lets a caller resume (rows it already has are not trained again); BASE and
    RANDOM do not depend on R and are run once (R = 0).
    """
    rows: list[dict] = []
    num_classes = config.model.num_classes

    def emit(row: dict) -> None:
        rows.append(row)
        if on_result is not None:
            on_result(row)

    def train_and_score(r: int, strategy: str, ratio: float, keep: np.ndarray) -> None:
        model = train_epochs(fresh_model(config, seed), [train[i] for i in keep], epochs, config, seed)
        emit({"seed": seed, "pretrain_epochs": r, "strategy": strategy, "keep_ratio": ratio, "kept": int(len(keep)),
              **accuracy(model, test)})

    for strategy in ("base", "random"):
        if strategy not in strategies:
            continue
        for ratio in ([1.0] if strategy == "base" else ratios):
            key = {"seed": seed, "pretrain_epochs": 0, "strategy": strategy, "keep_ratio": ratio}
            if skip is None or not skip(key):
                train_and_score(0, strategy, ratio, select_subset(strategy, ratio, None, train, seed, num_classes))
    scored = [s for s in strategies if s not in ("base", "random")]
    wanted = sorted(set(pretrain_epochs))
    todo = [(r, s, q) for r in wanted for s in scored for q in ratios
            if skip is None or not skip({"seed": seed, "pretrain_epochs": r, "strategy": s, "keep_ratio": q})]
    if not todo:
        return rows
    snapshots: dict[int, dict] = {}

    def snap(epoch: int, model: nn.Module) -> None:
        if epoch in wanted:
            snapshots[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    train_epochs(fresh_model(config, seed), train, max(wanted), config, seed + 1, after_epoch=snap)
    for r in wanted:
        model = fresh_model(config, seed)
        model.load_state_dict(snapshots[r])
        for strategy in scored:
            for ratio in ratios:
                if (r, strategy, ratio) in todo:
                    train_and_score(r, strategy, ratio, select_subset(strategy, ratio, model, train, seed, num_classes))
    return rows
