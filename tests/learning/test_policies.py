"""Every selection / replay policy of issue 5: formulas against direct computations, and each policy
running through ``Learner.observe`` from config alone."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.support.streams import stream
from edge_runtime.learning.batch import collate
from edge_runtime.learning.buffer import ReplayBuffer
from edge_runtime.core.config import BufferConfig, Config, config_from_dict
from edge_runtime.learning.learner import Learner
from edge_runtime.learning.model import build_model
from edge_runtime.learning.policies.scoring.balance import balance_score, minmax, pacing, sampling_weights
from edge_runtime.learning.policies.scoring.discrepancy import CumulativeDiscrepancy
from edge_runtime.learning.policies.scoring.el2n import el2n
from edge_runtime.learning.policies.scoring.grand import grand
from edge_runtime.learning.policies.scoring.shapley import contributions, gradient_embedding, kmeans_pp, modality_weights, shapley_two_modalities
from edge_runtime.learning.policies import REGISTRY, REPLAY_REGISTRY, build_policy
from edge_runtime.learning.policies.base import keep_by_score
from edge_runtime.learning.policies.replay.bss import BSSReplay, BSSSettings
from edge_runtime.learning.policies.replay.dus import DUSReplay, DUSSettings
from edge_runtime.core import policy_settings
from edge_runtime.learning.policies import registry
from edge_runtime.learning.policies.registry import parse_settings
from edge_runtime.core.sample import Sample


# ---------------------------------------------------------------- registry
@pytest.mark.parametrize("kind", ["selection", "replay"])
def test_every_policy_class_carries_the_settings_model_registered_for_its_name(kind):
    """The two tables (classes in the registry, settings models in core.policy_settings) name the same policies."""
    assert registry.names(kind) == policy_settings.names(kind)
    for name in registry.names(kind):
        model = policy_settings.settings_model(kind, name)
        assert registry.policy_class(kind, name).Settings is model, name
        assert model().policy == name


# ---------------------------------------------------------------- EL2N
def test_el2n_is_the_l2_norm_of_the_probability_error():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [-3.0, 5.0, 1.0]])
    labels = torch.tensor([0, 2, 0])
    got = el2n(logits, labels)
    for i in range(3):
        e = np.exp(logits[i].numpy().astype(np.float64))
        p = e / e.sum()
        p[labels[i]] -= 1.0
        assert got[i].item() == pytest.approx(math.sqrt((p**2).sum()), rel=1e-6)


def test_keep_by_score_keeps_smallest_or_largest_and_skips_nan():
    score = torch.tensor([0.5, float("nan"), 0.1, 0.9, 0.1, 0.7])
    assert keep_by_score(score, 0.5, largest=False).tolist() == [0, 2, 4]
    assert keep_by_score(score, 0.5, largest=True).tolist() == [0, 3, 5]
    assert keep_by_score(score, 0.01, largest=True).tolist() == [3]  # at least one


def test_el2n_policy_direction():
    torch.manual_seed(0)
    logits = torch.randn(10, 4)
    labels = torch.randint(0, 4, (10,))
    score = el2n(logits, labels)
    ctx = _ctx(logits, labels)
    small = build_policy(parse_settings("selection", dict(policy="el2n", keep_ratio=0.3))).select(ctx).indices
    large = build_policy(parse_settings("selection", dict(policy="el2n", keep_ratio=0.3, direction="largest"))).select(ctx).indices
    order = np.argsort(score.numpy(), kind="stable")
    assert sorted(small.tolist()) == sorted(order[:3].tolist())
    assert sorted(large.tolist()) == sorted(order[-3:].tolist())


def _ctx(logits, labels):
    from edge_runtime.learning.model import ModelOutput
    from edge_runtime.learning.policies.base import StepContext

    n, d = logits.shape[0], 4
    out = ModelOutput(logits, {"audio": logits / 2, "video": logits / 2}, {"audio": torch.zeros(n, d), "video": torch.zeros(n, d)})
    ones = torch.ones(n)
    return StepContext(batch=None, labels=labels, output=out, p={"audio": ones, "video": ones}, model=None)


# ---------------------------------------------------------------- GraNd
def _small_model() -> nn.Module:
    torch.manual_seed(0)
    cfg = Config().model.model_copy(update={"audio_channels": 8, "embed_dim": 8, "tiny_channels": 4})
    return build_model(cfg)


def _grad_norm_one_by_one(model, batch, labels, params):
    norms = []
    for i in range(labels.shape[0]):
        model.zero_grad(set_to_none=True)
        sub = batch.index(torch.tensor([i]))
        out = model(*sub.inputs())
        F.cross_entropy(out.logits, labels[i : i + 1]).backward()
        norms.append(math.sqrt(sum(float(p.grad.pow(2).sum()) for p in params if p.grad is not None)))
    return torch.tensor(norms)


@pytest.mark.parametrize("which", ["last_layer", "all"])
def test_grand_matches_autograd_one_sample_at_a_time(synthetic, which):
    model = _small_model()
    samples = stream(synthetic, range(6))
    batch = collate(samples)
    labels = batch.labels
    got = grand(model, batch.inputs(), labels, which)
    params = list(model.fusion.parameters()) if which == "last_layer" else list(model.parameters())
    if which == "last_layer":
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
    want = _grad_norm_one_by_one(model, batch, labels, params)
    assert torch.allclose(got.double(), want.double(), rtol=1e-4, atol=1e-6), (got, want)
    assert float(want.min()) > 0


# ---------------------------------------------------------------- BMMAL
def test_shapley_values_weights_and_embedding_by_hand():
    # Fusion f(z1, z2) = A z1 + B z2 + c, with hand-picked numbers.
    A = torch.tensor([[2.0, 0.0], [0.0, 0.5], [-1.0, 1.0]])
    B = torch.tensor([[0.2, 0.0], [0.0, 0.1], [0.0, 0.3]])
    c = torch.tensor([0.1, 0.0, -0.1])

    def f(z1, z2):
        return z1 @ A.T + z2 @ B.T + c

    z1 = torch.tensor([[1.0, 0.5], [0.0, 0.0]])
    z2 = torch.tensor([[0.5, 1.0], [1.0, 2.0]])
    d1, d2, probs = shapley_two_modalities(f, z1, z2)
    for i in range(2):
        def v(a, b):
            logits = (a @ A.T + b @ B.T + c).numpy().astype(np.float64)
            p = np.exp(logits) / np.exp(logits).sum()
            return p
        full = v(z1[i], z2[i])
        k = int(np.argmax(full))
        zero1, zero2 = torch.zeros(2), torch.zeros(2)
        v12, v1, v2, v0 = full[k], v(z1[i], zero2)[k], v(zero1, z2[i])[k], v(zero1, zero2)[k]
        want1 = 0.5 * ((v12 - v2) + (v1 - v0))
        want2 = 0.5 * ((v12 - v1) + (v2 - v0))
        assert d1[i].item() == pytest.approx(want1, abs=1e-6)
        assert d2[i].item() == pytest.approx(want2, abs=1e-6)
        assert d1[i].item() + d2[i].item() == pytest.approx(v12 - v0, abs=1e-6)  # Shapley efficiency
    assert d1[1].item() == pytest.approx(0.0, abs=1e-7)  # z1 = 0 contributes nothing

    phi = contributions(torch.tensor([[0.3, 0.1], [-0.1, 0.3], [0.0, 0.0]]))
    assert phi[:, 0].tolist() == pytest.approx([0.75, 0.25, 0.5])
    assert phi[:, 1].tolist() == pytest.approx([0.25, 0.75, 0.5])
    w = modality_weights(phi)
    assert w[:, 0].tolist() == pytest.approx([1.0, 0.5, 1.0])
    assert w[:, 1].tolist() == pytest.approx([0.5, 1.0, 1.0])

    p = torch.tensor([[0.7, 0.2, 0.1]])
    za, zv = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0]])
    emb = gradient_embedding(p, [za, zv], torch.tensor([[1.0, 0.5]]))
    err = np.array([0.7 - 1, 0.2, 0.1])
    want = np.concatenate([np.outer(err, [1.0, 2.0]).ravel(), 0.5 * np.outer(err, [3.0]).ravel()])
    assert emb[0].numpy() == pytest.approx(want, abs=1e-6)


@pytest.mark.slow
def test_kmeans_pp_first_pick_is_largest_norm_and_next_follow_d2():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, -4.0]])  # largest norm: row 4
    assert kmeans_pp(x, 1).tolist() == [4]
    d2 = ((x - x[4]) ** 2).sum(1).double()
    expected = (d2 / d2.sum()).numpy()
    g = torch.Generator().manual_seed(0)
    trials = 4000
    counts = np.zeros(5)
    for _ in range(trials):
        picks = kmeans_pp(x, 2, g).tolist()
        assert picks[0] == 4 and picks[1] != 4
        counts[picks[1]] += 1
    freq = counts / trials
    se = np.sqrt(expected * (1 - expected) / trials)
    assert np.all(np.abs(freq - expected) <= 5 * se + 1e-9), (freq, expected)
    # all distinct, even when points coincide
    same = torch.ones(6, 3)
    assert sorted(kmeans_pp(same, 6, g).tolist()) == list(range(6))


def test_bmmal_policy_keeps_k_distinct_rows(synthetic):
    model = _small_model()
    samples = stream(synthetic, range(20))
    batch = collate(samples)
    with torch.no_grad():
        out = model(*batch.inputs())
    from edge_runtime.learning.policies.base import StepContext

    ctx = StepContext(batch=batch, labels=batch.labels, output=out, p={"audio": torch.ones(20), "video": torch.ones(20)}, model=model)
    sel = build_policy(parse_settings("selection", dict(policy="bmmal", keep_ratio=0.25)), seed=1).select(ctx)
    assert len(sel.indices) == 5 and len(set(sel.indices.tolist())) == 5
    d1, d2, _ = shapley_two_modalities(lambda a, v: model.fusion({"audio": a, "video": v})[0], out.z["audio"], out.z["video"])
    phi = contributions(torch.stack([d1, d2], dim=1))
    assert torch.allclose(sel.deviation, (phi[:, 0] - phi[:, 1]).abs())


# ---------------------------------------------------------------- BSS
def test_bss_pacing_values():
    for t in (0, 1, 10, 39, 100):
        want = min(1.0, math.sqrt((1 - 0.1**2) / 40 * (t + 1) + 0.1**2))
        assert pacing(t) == pytest.approx(want)
    assert pacing(0) == pytest.approx(math.sqrt(0.99 / 40 + 0.01))
    assert pacing(39) == 1.0 and pacing(0) < pacing(5) < pacing(20) < 1.0


def test_bss_score_and_weights_by_hand():
    la = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    lv = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    lm = la + lv
    y = torch.tensor([0, 0, 0])
    pa, pv = F.softmax(la.double(), 1), F.softmax(lv.double(), 1)
    cos = (pa * pv).sum(1) / (pa.norm(dim=1) * pv.norm(dim=1))
    loss = 0.9 * (F.cross_entropy(la.double(), y, reduction="none") + F.cross_entropy(lv.double(), y, reduction="none")) \
        + 0.1 * F.cross_entropy(lm.double(), y, reduction="none")

    def mm(x):
        return (x - x.min()) / (x.max() - x.min())

    score = balance_score({"audio": la, "video": lv}, lm, y)
    assert score.double().numpy() == pytest.approx((mm(1 - cos) + mm(loss)).numpy(), abs=1e-5)
    assert score.argsort().tolist()[0] == 0  # agreeing, correct sample is the most balanced
    w = sampling_weights([la, lv], lm, y)
    assert w.double().numpy() == pytest.approx((1 - (mm(loss) - mm(cos)) + 0.01).numpy(), abs=1e-5)
    assert minmax(torch.tensor([3.0, 3.0])).tolist() == [0.0, 0.0]


def _labelled(seq: int, label: int) -> Sample:
    return Sample({"audio": np.zeros((2, 13), np.float32), "video": np.zeros((1, 1, 4, 4), np.float32)}, label, device="d", seq=seq)


def _scripted_forward(balance_of: dict):
    """A forward whose unimodal outputs make sample (d, seq) exactly as balanced as ``balance_of[seq]`` says."""
    from edge_runtime.learning.model import ModelOutput

    def forward(samples):
        rows = []
        for s in samples:
            agree = balance_of[s.seq]
            rows.append(([3.0, 0.0], [3.0 * agree - 3.0 * (1 - agree), 3.0 * (1 - agree)]))
        a = torch.tensor([r[0] for r in rows])
        v = torch.tensor([r[1] for r in rows])
        z = torch.zeros(len(samples), 2)
        return ModelOutput(a + v, {"audio": a, "video": v}, {"audio": z, "video": z})

    return forward


def test_bss_heuristic_replays_only_the_most_balanced_share():
    buf = ReplayBuffer(BufferConfig(max_items=100, retention="reservoir"))
    balance = {}
    for seq in range(100):
        buf.offer(_labelled(seq, 0))
        balance[seq] = seq / 99  # higher seq = more balanced (modalities agree)
    policy = BSSReplay(BSSSettings(round_updates=1000), replay_batch_size=8)
    forward = _scripted_forward(balance)
    share = pacing(0)
    allowed = set(range(100 - math.ceil(share * 100), 100))
    seen = set()
    for _ in range(50):
        plan = policy.plan(buf, 8, forward)
        assert len(plan.samples) == 8
        seen |= {s.seq for s in plan.samples}
    assert seen <= allowed and len(seen) > 8


def test_bss_learned_draws_proportional_to_weights():
    buf = ReplayBuffer(BufferConfig(max_items=10, retention="reservoir"))
    balance = {seq: seq / 9 for seq in range(10)}
    for seq in range(10):
        buf.offer(_labelled(seq, 0))
    policy = BSSReplay(BSSSettings(variant="learned", round_updates=10**6), replay_batch_size=1)
    forward = _scripted_forward(balance)
    counts = np.zeros(10)
    trials = 3000
    for _ in range(trials):
        counts[policy.plan(buf, 1, forward).samples[0].seq] += 1
    out = forward([buf.get(k) for k in policy.keys])
    w = sampling_weights(out.unimodal, out.logits, torch.zeros(10, dtype=torch.long)).double().numpy()
    expected = np.zeros(10)
    for k, wk in zip(policy.keys, w):
        expected[k[1]] = wk / w.sum()
    se = np.sqrt(expected * (1 - expected) / trials)
    assert np.all(np.abs(counts / trials - expected) <= 5 * se + 1e-9)


# ---------------------------------------------------------------- DUS
def test_cumulative_discrepancy_recursion_and_quantity():
    mon = CumulativeDiscrepancy(gamma=0.5)
    steps = [(torch.tensor([0.9, 0.7]), torch.tensor([0.1, 0.3])), (torch.tensor([0.5]), torch.tensor([0.5])),
             (torch.tensor([0.2, 0.2]), torch.tensor([0.8, 0.6]))]
    want = 0.0
    for pa, pv in steps:
        want = 0.5 * want + float(pa.mean() - pv.mean())
        assert mon.update({"audio": pa, "video": pv}) == pytest.approx({"audio": want, "video": -want})
    assert want < 0 and mon.weaker == "audio"
    assert mon.imbalance == pytest.approx(0.5 * abs(want))
    assert mon.quantity(32) == round(32 * 0.5 * abs(want))
    assert mon.quantity(32, epsilon=0.99) == 0


def test_dus_plans_extra_samples_of_the_weaker_modality():
    buf = ReplayBuffer(BufferConfig(max_items=50, retention="reservoir"))
    for seq in range(50):
        buf.offer(_labelled(seq, seq % 3))
    pol = DUSReplay(DUSSettings(gamma=0.0), replay_batch_size=8)
    from edge_runtime.learning.policies.base import StepContext

    pol.observe(StepContext(None, None, None, {"audio": torch.full((4,), 0.9), "video": torch.full((4,), 0.4)}, None))
    plan = pol.plan(buf, 8, lambda s: None)
    assert len(plan.samples) == 8
    assert list(plan.extra) == ["video"] and len(plan.extra["video"]) == round(8 * 0.5)


# ---------------------------------------------------------------- every policy through the Learner
ALL = [("selection", name) for name in sorted(REGISTRY)] + [("replay", name) for name in sorted(REPLAY_REGISTRY)]


@pytest.mark.slow
@pytest.mark.parametrize("section,name", ALL)
def test_every_policy_runs_through_observe_from_config(synthetic, section, name):
    cfg = config_from_dict({section: {"policy": name}, "buffer": {"max_items": 40}})
    learner = Learner(cfg)
    samples = stream(synthetic, range(192))
    verdicts = []
    for i in range(0, 192, 32):
        verdicts += learner.observe(samples[i : i + 32])
    assert len(verdicts) == 192 and all(v in ("admitted", "trained", "skipped") for v in verdicts)
    used = sum(v != "skipped" for v in verdicts)
    if section == "selection" and name == "all":
        assert used == 192
    elif section == "selection" and name != "mbs":
        assert used == 6 * math.floor(cfg.selection.keep_ratio * 32)  # the policy's default keep_ratio of each batch
    assert learner.stats.updates == 6 and 0 < len(learner.buffer) <= 40
    state = learner.state_dict()
    clone = Learner(cfg)
    clone.load_state_dict(state)
    assert clone.summary() == learner.summary()
