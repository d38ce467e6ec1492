"""GraNd score (Paul et al., "Deep Learning on a Data Diet", NeurIPS 2021, Eq. 1).

``GraNd(x, y) = || grad_theta CE(f_theta(x), y) ||_2``: the norm of the per-sample loss gradient
(the paper averages it over several initialisations; here it is taken at the current weights,
as the MBS paper does after R pre-training epochs).

Per-sample gradients come from :mod:`torch.func`: ``vmap(grad(loss))`` over the batch.  For
``params="last_layer"`` the loss is a function of the fusion head's parameters only (every
parameter of ``model.fusion``; one that does not reach the fused logits, such as an auxiliary
unimodal head of the ``film`` and ``gated`` heads, has gradient 0), fed with the (detached)
embeddings ``z`` (name -> (B, d), any number of modalities), so vmap runs over the whole batch at
once.  For ``params="all"`` the encoders select each sample's valid steps with data-dependent
indexing, which vmap cannot batch; there ``grad`` runs once per sample (``torch.func.grad`` +
``functional_call``, no vmap), each modality trimmed to that sample's own length.
"""

from __future__ import annotations

from typing import Literal, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

GradParams = Literal["all", "last_layer"]


def _head_loss(head: nn.Module):
    def loss(params: dict[str, torch.Tensor], z: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(head, params, ({name: t[None] for name, t in z.items()},))[0]
        return F.cross_entropy(logits, y[None])

    return loss


def grand_last_layer(head: nn.Module, z: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Per-sample ``||d CE / d theta_head||_2`` of the fusion head ``head`` (``head(z) -> (logits, unimodal)``)
    at the embeddings ``z`` (name -> (B, d_name), in the model's order)."""
    params = {k: v.detach() for k, v in head.named_parameters()}
    zs = {name: t.detach() for name, t in z.items()}
    grads = vmap(grad(_head_loss(head)), in_dims=(None, 0, 0))(params, zs, labels)
    sq = sum(g.flatten(1).pow(2).sum(dim=1) for g in grads.values())
    return sq.sqrt()


def grand_all(model: nn.Module, inputs: tuple[torch.Tensor, ...], labels: torch.Tensor) -> torch.Tensor:
    """Per-sample ``||d CE / d theta||_2`` over every parameter of ``model``.

    ``inputs`` = ``(x_1, lengths_1, ..., x_N, lengths_N)`` (``Batch.inputs()``), batch first; each
    sample is run alone, every modality trimmed to that sample's length along its axis 1 (a vector
    modality's length is its size, so it is kept whole).
    """
    if len(inputs) % 2:
        raise ValueError(f"inputs must be (x, lengths) pairs, one per modality (got {len(inputs)} tensors)")
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss(p: dict[str, torch.Tensor], args: tuple[torch.Tensor, ...], y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, buffers), args)
        return F.cross_entropy(out[0], y)

    g_fn = grad(loss)
    xs, lengths = inputs[0::2], inputs[1::2]
    norms = []
    for i in range(labels.shape[0]):
        args: list[torch.Tensor] = []
        for x, n in zip(xs, lengths):
            args += [x[i : i + 1, : int(n[i])], n[i : i + 1]]
        g = g_fn(params, tuple(args), labels[i : i + 1])
        norms.append(torch.sqrt(sum(t.pow(2).sum() for t in g.values())))
    return torch.stack(norms) if norms else torch.zeros(0, device=labels.device)


def grand(model: nn.Module, inputs: tuple[torch.Tensor, ...], labels: torch.Tensor, params: GradParams = "last_layer",
          z: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """GraNd of every row: ``params="last_layer"`` (fusion head; pass the embeddings ``z``, name -> (B, d),
    to skip the encoder forward) or ``"all"``."""
    if params == "all":
        return grand_all(model, inputs, labels)
    if params != "last_layer":
        raise ValueError(f"params must be 'all' or 'last_layer' (got {params!r})")
    if z is None:
        with torch.no_grad():
            out = model(*inputs)
        z = out.z
    return grand_last_layer(model.fusion, z, labels)
