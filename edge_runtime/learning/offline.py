"""The MBS paper's offline protocol (Experiment B): pre-train, score, keep a ratio, re-train, evaluate.

1. pre-train a model for R epochs on the full training set (snapshots at several R in one run);
2. score the whole training set with the pre-trained model and select with the *same* admission
   policy the stream uses, ``build_policy(settings).select(ctx)``, where ``ctx`` holds the whole
   set as one batch: the model's outputs (eval mode), and per-modality confidences of the true
   class, one per modality of the configuration keyed by its name (``prototypes.confidence``:
   ``prototype`` with the class means of each modality's embeddings over the set as prototypes, or
   ``linear``, the unimodal heads).  Any registered admission policy is a strategy; ``base`` is the
   ``all`` policy (everything);
3. the policy keeps ``keep_ratio`` of the set (a KEPT fraction: the paper's tables speak of pruning);
4. train a fresh model (same seed) for E epochs on the kept subset;
5. evaluate on the test set: fused accuracy (``accuracy``) and each modality's own head
   (``<name>_accuracy``: ``audio_accuracy`` and ``video_accuracy`` by default).

Plain supervised training here (the ``training.optimizer`` of the config, cross-entropy on the
fused logits, shuffled mini-batches): the protocol compares selection criteria, not the streaming
learner.  A strategy's settings are the config's ``selection`` section when it names that policy
(so ``selection.center`` reaches ``mbs``), else the policy's defaults; ``keep_ratio`` is the ratio.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_runtime.learning.batch import collate
from edge_runtime.core.config import Config
from edge_runtime.learning.learner import make_optimizer
from edge_runtime.learning.model import ModelOutput, build_model
from edge_runtime.learning.policies import build_policy
from edge_runtime.learning.policies.base import StepContext
from edge_runtime.learning.policies.registry import SelectionSettings, names, parse_settings, settings_model
from edge_runtime.core.sample import Sample

#: Strategies that do not look at the model: run once per ratio (R = 0), not per pre-training length.
CONTROLS = ("base", "random")


def policy_name(strategy: str) -> str:
    """The admission policy of a strategy (``base`` is ``all``)."""
    return "all" if strategy == "base" else strategy


def strategies() -> list[str]:
    """Every strategy: ``base`` plus each registered admission policy but ``all``."""
    return ["base"] + [n for n in names("selection") if n != "all"]


def strategy_settings(config: Config, strategy: str, ratio: float) -> SelectionSettings:
    """The settings of ``strategy`` at KEPT fraction ``ratio`` (see the module docstring)."""
    name = policy_name(strategy)
    data = config.selection.model_dump() if config.selection.policy == name else {"policy": name}
    if "keep_ratio" in settings_model("selection", name).model_fields:
        data["keep_ratio"] = ratio
    return parse_settings("selection", data)


@torch.no_grad()
def predict(model: nn.Module, samples: Sequence[Sample], batch_size: int = 256) -> tuple[ModelOutput, torch.Tensor]:
    """The model's outputs (eval mode) over ``samples``, in order, and their labels."""
    model.eval()
    outs, labels = [], []
    for i in range(0, len(samples), batch_size):
        b = collate(list(samples[i : i + batch_size]), _modalities(model))
        outs.append(model(*b.inputs()))
        labels.append(b.labels)
    model.train()
    return ModelOutput.cat(outs), torch.cat(labels)


def _modalities(model: nn.Module) -> tuple[str, ...] | None:
    """The model's modality names in its input order (the model interface, docs/modalities.md)."""
    names = getattr(model, "modalities", None)
    return tuple(names) if names is not None else None


def accuracy(model: nn.Module, samples: Sequence[Sample]) -> dict[str, float]:
    """``accuracy`` of the fused head and ``<name>_accuracy`` of each modality's own head on ``samples``
    (flat keys: a row of the protocol's CSV)."""
    o, y = predict(model, samples)
    out = {"accuracy": float((o.logits.argmax(1) == y).float().mean())}
    for name, logits in o.unimodal.items():
        out[f"{name}_accuracy"] = float((logits.argmax(1) == y).float().mean())
    return out


def train_epochs(model: nn.Module, samples: Sequence[Sample], epochs: int, config: Config, seed: int,
                 batch_size: int = 32, after_epoch: Callable[[int, nn.Module], None] | None = None) -> nn.Module:
    """Plain supervised training: ``training.optimizer``, CE on the fused logits, seeded shuffles."""
    opt = make_optimizer(config.training, model.parameters())
    rng = np.random.default_rng(seed)
    model.train()
    for epoch in range(epochs):
        order = rng.permutation(len(samples))
        for i in range(0, len(order), batch_size):
            b = collate([samples[j] for j in order[i : i + batch_size]], _modalities(model))
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
    """A new model of ``config`` (its modalities, or ``model.builder``'s) from seed ``seed``."""
    torch.manual_seed(seed)
    return build_model(config)


def prototype_confidence(z: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``softmax_k(-||z - c_k||)[y]`` with ``c_k`` the mean of class k's embeddings in ``z``."""
    sums = torch.zeros(num_classes, z.shape[1], dtype=z.dtype).index_add_(0, y, z)
    counts = torch.bincount(y, minlength=num_classes).to(z.dtype)
    present = counts > 0
    centres = sums[present] / counts[present, None]
    col = torch.cumsum(present.long(), 0)[y] - 1  # column of each label among the present classes
    logits = -torch.cdist(z, centres)
    return F.softmax(logits, dim=1).gather(1, col[:, None]).squeeze(1)


def score_context(model: nn.Module, samples: Sequence[Sample], config: Config) -> StepContext:
    """The whole set as one selection context: outputs of ``model`` and, per modality (by name, in the
    model's order), the confidences of the true class."""
    out, y = predict(model, samples)
    if config.prototypes.confidence == "prototype":
        k = config.model.num_classes
        p = {name: prototype_confidence(z, y, k) for name, z in out.z.items()}
    else:
        p = {name: F.softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1) for name, logits in out.unimodal.items()}
    return StepContext(batch=collate(list(samples), _modalities(model)), labels=y, output=out, p=p, model=model)


def select_subset(settings: SelectionSettings, model: nn.Module, samples: Sequence[Sample], config: Config, seed: int) -> np.ndarray:
    """Indices (into ``samples``) that the admission policy of ``settings`` keeps of the whole set."""
    policy = build_policy(settings, seed=seed, modalities=_modalities(model))
    with torch.no_grad():
        chosen = policy.select(score_context(model, samples, config)).indices
    return np.sort(chosen.cpu().numpy())


def run_protocol(train: Sequence[Sample], test: Sequence[Sample], config: Config, pretrain_epochs: Sequence[int],
                 ratios: Sequence[float], strategies: Sequence[str], epochs: int, seed: int = 0,
                 on_result: Callable[[dict], None] | None = None, skip: Callable[[dict], bool] | None = None) -> list[dict]:
    """Experiment B for one seed: rows of (R, strategy, ratio, kept, accuracies).

    ``skip(row_key)`` lets a caller resume (rows it already has are not trained again); the
    :data:`CONTROLS` do not depend on R and are run once (R = 0, scored by the untrained model).
    """
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        if on_result is not None:
            on_result(row)

    def train_and_score(r: int, strategy: str, ratio: float, model: nn.Module) -> None:
        keep = select_subset(strategy_settings(config, strategy, ratio), model, train, config, seed)
        trained = train_epochs(fresh_model(config, seed), [train[i] for i in keep], epochs, config, seed)
        emit({"seed": seed, "pretrain_epochs": r, "strategy": strategy, "keep_ratio": ratio, "kept": int(len(keep)),
              **accuracy(trained, test)})

    for strategy in CONTROLS:
        if strategy not in strategies:
            continue
        for ratio in ([1.0] if strategy == "base" else ratios):
            key = {"seed": seed, "pretrain_epochs": 0, "strategy": strategy, "keep_ratio": ratio}
            if skip is None or not skip(key):
                train_and_score(0, strategy, ratio, fresh_model(config, seed))
    scored = [s for s in strategies if s not in CONTROLS]
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
                    train_and_score(r, strategy, ratio, model)
    return rows
