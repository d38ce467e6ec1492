"""GraNd score (Paul et al., "Deep Learning on a Data Diet", NeurIPS 2021, Eq. 1).

``GraNd(x, y) = || grad_theta CE(f_theta(x), y) ||_2``: the norm of the per-sample loss gradient
(the paper averages it over several initialisations; here it is taken at the current weights,
as the MBS paper does after R pre-training epochs).

Per-sample gradients come from :mod:`torch.func`: ``vmap(grad(loss))`` over the batch.  For
``params="last_layer"`` the loss is a function of the fusion head's parameters only, fed with the
(detached) embeddings, so vmap runs over the whole batch at once.  For ``params="all"`` the
encoders select each sample's valid frames with data-dependent indexing, which vmap cannot
batch; there ``grad`` runs once per sample (``torch.func.grad`` + ``functional_call``, no vmap).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

GradParams = Literal["all", "last_layer"]


def _head_loss(head: nn.Module):
    def loss(params: dict[str, torch.Tensor], z_a: torch.Tensor, z_v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(head, params, (z_a[None], z_v[None]))[0]
        return F.cross_entropy(logits, y[None])

    return loss


def grand_last_layer(head: nn.Module, z_a: torch.Tensor, z_v: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample ``||d CE / d theta_head||_2`` of the fusion head at embeddings ``z_a``, ``z_v`` (B, d)."""
    params = {k: v.detach() for k, v in head.named_parameters()}
    grads = vmap(grad(_head_loss(head)), in_dims=(None, 0, 0, 0))(params, z_a.detach(), z_v.detach(), labels)
    sq = sum(g.flatten(1).pow(2).sum(dim=1) for g in grads.values())
    return sq.sqrt()


def grand_all(model: nn.Module, inputs: tuple[torch.Tensor, ...], labels: torch.Tensor) -> torch.Tensor:
    """Per-sample ``||d CE / d theta||_2`` over every parameter of ``model``.

    ``inputs`` = (audio, audio_lengths, video, video_lengths), batch first; each sample is run
    alone, trimmed to its own lengths.
    """
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss(p: dict[str, torch.Tensor], audio, a_len, video, v_len, y) -> torch.Tensor:
        out = functional_call(model, (p, buffers), (audio, a_len, video, v_len))
        return F.cross_entropy(out[0], y)

    g_fn = grad(loss)
    audio, a_len, video, v_len = inputs
    norms = []
    for i in range(labels.shape[0]):
        ta, tv = int(a_len[i]), int(v_len[i])
        g = g_fn(params, audio[i : i + 1, :ta], a_len[i : i + 1], video[i : i + 1, :tv], v_len[i : i + 1], labels[i : i + 1])
        norms.append(torch.sqrt(sum(t.pow(2).sum() for t in g.values())))
    return torch.stack(norms) if norms else torch.zeros(0, device=labels.device)


def grand(model: nn.Module, inputs: tuple[torch.Tensor, ...], labels: torch.Tensor, params: GradParams = "last_layer",
          z: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """GraNd of every row: ``params="last_layer"`` (fusion head; pass the embeddings ``z`` to skip the
    encoder forward) or ``"all"``."""
    if params == "all":
        return grand_all(model, inputs, labels)
    if params != "last_layer":
        raise ValueError(f"params must be 'all' or 'last_layer' (got {params!r})")
    if z is None:
        with torch.no_grad():
            out = model(*inputs)
        z = (out.z_audio, out.z_video)
    return grand_last_layer(model.fusion, z[0], z[1], labels)
