"""Every policy for N named modalities: at N = 2 exactly the two-modality formulas (written out here as
they were), at N = 3 and 4 against direct computations (brute-force Shapley values over permutations,
pairwise cosines, the discrepancy recursion, per-sample autograd), one modality refused, and every
registered policy running through ``Learner.observe`` at N = 3 and on the default audio + video."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edge_runtime.core.config import Config, config_from_dict
from edge_runtime.core.sample import Sample
from edge_runtime.learning.batch import collate
from edge_runtime.learning.learner import Learner
from edge_runtime.learning.losses import Forwarded, UnimodalCE, UpdateStep
from edge_runtime.learning.model import ModelOutput, build_model
from edge_runtime.learning.offline import accuracy, prototype_confidence, score_context, select_subset, strategies, strategy_settings
from edge_runtime.learning.policies import build_policy, build_replay
from edge_runtime.learning.policies.base import ReplayPlan, StepContext
from edge_runtime.learning.policies.registry import names, parse_settings
from edge_runtime.learning.policies.scoring.balance import balance_score, balance_terms, minmax, sampling_weights
from edge_runtime.learning.policies.scoring.discrepancy import CumulativeDiscrepancy
from edge_runtime.learning.policies.scoring.grand import grand
from edge_runtime.learning.policies.scoring.mbs import confidence_spread, mbs, spread
from edge_runtime.learning.policies.scoring.shapley import (contributions, gradient_embedding, modality_weights, shapley_enumerated,
                                                            shapley_two_modalities, shapley_values)

MODS3 = {"a": {"kind": "series", "channels": 3}, "b": {"kind": "series", "channels": 2}, "c": {"kind": "vector", "channels": 5}}
CLASSES = 4


def config3(**sections) -> Config:
    return config_from_dict({"modalities": MODS3, "model": {"num_classes": CLASSES, **sections.pop("model", {})}, **sections})


def model3(**model) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(config3(model=model))


def samples3(n: int, seed: int = 0) -> list[Sample]:
    """Random samples of the three modalities, variable lengths, labels mixed into the values."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        y = int(rng.integers(0, CLASSES))
        out.append(Sample({"a": (rng.normal(size=(int(rng.integers(2, 9)), 3)) + y).astype(np.float32),
                           "b": (rng.normal(size=(int(rng.integers(2, 7)), 2)) - y).astype(np.float32),
                           "c": (rng.normal(size=(5,)) * (y + 1)).astype(np.float32)}, y, device="d", seq=i))
    return out


def ctx_of(p: dict, labels=None, output=None, model=None, batch=None) -> StepContext:
    n = len(next(iter(p.values())))
    labels = torch.zeros(n, dtype=torch.long) if labels is None else torch.as_tensor(labels)
    return StepContext(batch=batch, labels=labels, output=output, p={k: torch.as_tensor(v, dtype=torch.float64) for k, v in p.items()},
                       model=model)


def smallest(score, k):
    """The k rows of smallest score (NaN never), ties to the lower index, sorted."""
    rows = [i for i, s in enumerate(score) if not math.isnan(s)]
    return sorted(sorted(rows, key=lambda i: (score[i], i))[:k])


# ---------------------------------------------------------------- MBS family
def test_spread_is_abs_log_mbs_at_two_and_log_max_over_min_at_three():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.001, 1, size=(50, 3))
    p[3, 1] = 0.0  # clamped at tiny, finite
    t = torch.tensor(p)
    two = spread([t[:, 0], t[:, 1]])
    tiny = np.finfo(np.float64).tiny
    q = np.maximum(p, tiny)
    np.testing.assert_allclose(two.numpy(), np.abs(np.log(q[:, 0] / q[:, 1])), rtol=1e-12)
    np.testing.assert_allclose(two.numpy(), np.abs(np.log(mbs(t[:, 0], t[:, 1]).numpy())), rtol=1e-9, atol=1e-12)
    three = spread({"a": t[:, 0], "b": t[:, 1], "c": t[:, 2]})
    np.testing.assert_allclose(three.numpy(), np.log(q.max(1)) - np.log(q.min(1)), rtol=1e-12)
    p32 = p.astype(np.float32)
    np.testing.assert_array_equal(confidence_spread(t).numpy(), p32.max(1) - p32.min(1))
    t[5, 2] = float("nan")
    assert math.isnan(spread(t)[5]) and math.isnan(confidence_spread(t)[5]) and not math.isnan(spread(t)[4])


@pytest.mark.parametrize("order", [("x", "y"), ("y", "x")])
def test_two_modalities_of_any_names_are_the_papers_ratio_first_over_second(order):
    """N = 2 is Algorithm 1 on ``p_first / p_second`` in the model's order, whatever the names."""
    from edge_runtime.learning.policies.admission.mbs import select_with_deviation

    rng = np.random.default_rng(1)
    p1, p2 = rng.uniform(0.01, 1, 21), rng.uniform(0.01, 1, 21)
    policy = build_policy(parse_settings("selection", {"policy": "mbs", "keep_ratio": 0.5}))
    got = policy.select(ctx_of({order[0]: p1, order[1]: p2}))
    want, dev = select_with_deviation(torch.tensor(p1 / p2), 0.5, "median", "ratio")
    assert got.indices.tolist() == want.tolist()
    assert torch.equal(got.deviation, dev)
    gap = build_policy(parse_settings("selection", {"policy": "mbs-gap", "keep_ratio": 0.5})).select(ctx_of({order[0]: p1, order[1]: p2}))
    old_gap = (torch.tensor(p1).float() - torch.tensor(p2).float()).abs()  # the two-modality formula, float32
    assert torch.equal(gap.deviation, old_gap) and gap.indices.tolist() == smallest(old_gap.tolist(), 10)


@pytest.mark.parametrize("settings", [{"policy": "mbs"}, {"policy": "mbs", "center": "one", "deviation": "log", "split": "one"},
                                      {"policy": "mbs", "center": "running", "running_window": 8}, {"policy": "mbs-pooled"}])
def test_mbs_at_three_modalities_keeps_the_smallest_spreads_whatever_the_centre(settings):
    rng = np.random.default_rng(2)
    p = rng.uniform(0.01, 1, size=(30, 3))
    p[7, 0] = float("nan")
    policy = build_policy(parse_settings("selection", {**settings, "keep_ratio": 0.4}))
    for _ in range(2):  # the running centre (unused at N = 3) does not change the second batch either
        got = policy.select(ctx_of({"a": p[:, 0], "b": p[:, 1], "c": p[:, 2]}))
        s = [float(np.log(r.max()) - np.log(r.min())) if not np.isnan(r).any() else math.nan for r in p]
        assert got.indices.tolist() == smallest(s, 12)  # max(1, floor(0.4 * 30))
        np.testing.assert_allclose(got.deviation.numpy(), s, rtol=1e-12)


def test_mbs_class_at_three_modalities_keeps_each_class_quota_of_smallest_spread():
    from edge_runtime.learning.policies.admission.mbs_class import class_quotas

    rng = np.random.default_rng(3)
    p = rng.uniform(0.01, 1, size=(25, 3))
    labels = rng.integers(0, 3, 25)
    got = build_policy(parse_settings("selection", {"policy": "mbs-class", "keep_ratio": 0.4})).select(
        ctx_of({"a": p[:, 0], "b": p[:, 1], "c": p[:, 2]}, labels=labels))
    s = np.log(p.max(1)) - np.log(p.min(1))
    quota = class_quotas({int(c): int((labels == c).sum()) for c in np.unique(labels)}, 0.4)
    want = []
    for c, q in quota.items():
        rows = [i for i in range(25) if labels[i] == c]
        want += sorted(rows, key=lambda i: (s[i], i))[:q]
    assert got.indices.tolist() == sorted(want) and len(want) == 10
    np.testing.assert_allclose(got.deviation.numpy(), s, rtol=1e-12)


def test_mbs_gap_at_three_modalities_is_max_minus_min_confidence():
    rng = np.random.default_rng(4)
    p = rng.uniform(0, 1, size=(20, 3))
    got = build_policy(parse_settings("selection", {"policy": "mbs-gap", "keep_ratio": 0.5})).select(
        ctx_of({"a": p[:, 0], "b": p[:, 1], "c": p[:, 2]}))
    p32 = p.astype(np.float32)  # the gap is taken in float32, as the two-modality one
    np.testing.assert_array_equal(got.deviation.numpy(), p32.max(1) - p32.min(1))
    assert got.indices.tolist() == smallest(got.deviation.tolist(), 10)
    assert set(got.indices.tolist()) == set(np.argsort(p.max(1) - p.min(1), kind="stable")[:10].tolist())


@pytest.mark.parametrize("kind,name", [("selection", "mbs"), ("selection", "mbs-pooled"), ("selection", "mbs-class"), ("selection", "mbs-gap"),
                                       ("selection", "bmmal"), ("replay", "bss"), ("replay", "dus")])
def test_a_balance_policy_refuses_one_modality_at_construction_and_at_first_use(kind, name):
    cfg = parse_settings(kind, {"policy": name})
    build = (lambda **kw: build_policy(cfg, **kw)) if kind == "selection" else (lambda **kw: build_replay(cfg, 8, **kw))
    with pytest.raises(ValueError, match=rf"^{name} .*: it needs at least 2 modalities, 1 declared \(accel\)$"):
        build(modalities=("accel",))
    build(modalities=("accel", "gyro"))  # two are fine
    policy = build()  # without the names: the first use says it
    one = ctx_of({"accel": [0.5, 0.2]}, output=ModelOutput(torch.zeros(2, 3), {"accel": torch.zeros(2, 3)}, {"accel": torch.zeros(2, 4)}))
    with pytest.raises(ValueError, match="it needs at least 2 modalities, 1 declared"):
        policy.select(one) if kind == "selection" else policy.observe(one)


def test_policies_that_need_no_balance_accept_one_modality():
    for name in ("all", "random", "el2n", "grand"):
        build_policy(parse_settings("selection", {"policy": name}), modalities=("accel",))
    build_replay(parse_settings("replay", {"policy": "uniform"}), 8, modalities=("accel",))


# ---------------------------------------------------------------- BSS
def _old_bss_terms(la, lv, lm, y):
    """The two-modality formulas as they were: cos(p_a, p_v) and 0.9 (l_a + l_v) + 0.1 l_mm."""
    pa, pv = F.softmax(la.float(), dim=1), F.softmax(lv.float(), dim=1)
    sim = F.cosine_similarity(pa, pv, dim=1)
    ce = lambda o: F.cross_entropy(o.float(), y, reduction="none")  # noqa: E731
    return sim, 0.9 * (ce(la) + ce(lv)) + 0.1 * ce(lm)


def test_bss_terms_at_two_modalities_are_bit_for_bit_the_two_modality_formulas():
    torch.manual_seed(5)
    la, lv, lm = torch.randn(40, 6), torch.randn(40, 6), torch.randn(40, 6)
    y = torch.randint(0, 6, (40,))
    sim, loss = balance_terms({"x": la, "y": lv}, lm, y)
    want_sim, want_loss = _old_bss_terms(la, lv, lm, y)
    assert torch.equal(sim, want_sim) and torch.equal(loss, want_loss)
    assert torch.equal(balance_score([la, lv], lm, y), minmax(1 - want_sim) + minmax(want_loss))
    assert torch.equal(sampling_weights([la, lv], lm, y), 1 - (minmax(want_loss) - minmax(want_sim)) + 0.01)


def test_bss_terms_at_three_modalities_mean_pairwise_cosine_and_summed_unimodal_loss():
    torch.manual_seed(6)
    outs = {k: torch.randn(12, 5) * 2 for k in "abc"}
    lm = torch.randn(12, 5)
    y = torch.randint(0, 5, (12,))
    sim, loss = balance_terms(outs, lm, y)
    for i in range(12):
        ps = [np.exp(o[i].double().numpy()) / np.exp(o[i].double().numpy()).sum() for o in outs.values()]
        cos = [ps[m] @ ps[n] / (np.linalg.norm(ps[m]) * np.linalg.norm(ps[n])) for m, n in ((0, 1), (0, 2), (1, 2))]
        assert sim[i].item() == pytest.approx(np.mean(cos), abs=1e-6)
        ce = [-math.log(p[y[i]]) for p in ps]
        pm = np.exp(lm[i].double().numpy()) / np.exp(lm[i].double().numpy()).sum()
        assert loss[i].item() == pytest.approx(0.9 * sum(ce) + 0.1 * -math.log(pm[y[i]]), rel=1e-5)
    score = balance_score(outs, lm, y)
    assert torch.allclose(score, minmax(1 - sim) + minmax(loss))


# ---------------------------------------------------------------- DUS
def test_discrepancy_at_three_modalities_by_the_recursion():
    rng = np.random.default_rng(7)
    gamma = 0.6
    mon = CumulativeDiscrepancy(gamma)
    D = np.zeros(3)
    for step in range(6):
        p = rng.uniform(0, 1, size=(9, 3)) ** np.array([1.0, 6.0, 0.5])
        if step == 2:
            p[4, 1] = np.nan  # the row is left out for every modality
        rows = ~np.isnan(p).any(1)
        mu = p[rows].mean(0)
        d = np.array([mu[m] - np.mean([mu[k] for k in range(3) if k != m]) for m in range(3)])
        D = gamma * D + d
        got = mon.update({"a": torch.tensor(p[:, 0], dtype=torch.float32), "b": torch.tensor(p[:, 1], dtype=torch.float32),
                          "c": torch.tensor(p[:, 2], dtype=torch.float32)})
        np.testing.assert_allclose([got["a"], got["b"], got["c"]], D, atol=1e-6)
    level = (1 - gamma) * (2 / 3) * (D.max() - D.min())
    assert mon.imbalance == pytest.approx(level, abs=1e-6) and 0 < level <= 1
    assert mon.weaker == "abc"[int(np.argmin(D))] == "b"  # b is the least confident (p ** 6)
    assert mon.quantity(20) == round(20 * level)
    assert mon.steps == 6


def test_discrepancy_at_two_modalities_is_the_scalar_recursion_and_a_saved_scalar_state_loads():
    rng = np.random.default_rng(8)
    gamma = 0.9
    mon = CumulativeDiscrepancy(gamma)
    value = 0.0  # the two-modality monitor: D = gamma D + (mean p_1 - mean p_2), iota = (1 - gamma) |D|
    for step in range(8):
        pa, pv = torch.rand(7, generator=torch.Generator().manual_seed(step)), torch.tensor(rng.uniform(0, 0.5, 7), dtype=torch.float32)
        value = gamma * value + float(pa.mean() - pv.mean())
        mon.update({"left": pa, "right": pv})
        assert mon.values == {"left": value, "right": -value}  # exactly
        assert mon.imbalance == min(1.0, (1.0 - gamma) * abs(value))
        assert mon.weaker == ("right" if value > 0 else "left")
    # a state saved by the two-modality version
    old_state = {"value": value, "steps": 8}
    restored = CumulativeDiscrepancy(gamma)
    restored.load_state_dict(old_state)
    assert restored.imbalance == min(1.0, (1.0 - gamma) * abs(value)) and restored.state_dict() == old_state
    pa, pv = torch.full((3,), 0.2), torch.full((3,), 0.7)
    restored.update({"left": pa, "right": pv})
    mon.update({"left": pa, "right": pv})
    assert restored.values == mon.values and restored.steps == mon.steps == 9
    bound = CumulativeDiscrepancy(gamma, modalities=("audio", "video"))
    bound.load_state_dict(old_state)
    assert bound.values == {"audio": value, "video": -value}
    assert CumulativeDiscrepancy(gamma, ("audio", "video")).state_dict() == {"value": {"audio": 0.0, "video": 0.0}, "steps": 0}
    three = CumulativeDiscrepancy(gamma)
    three.load_state_dict(old_state)
    with pytest.raises(ValueError, match="two-modality stream; it cannot be restored for 3 modalities"):
        three.update({k: torch.ones(2) for k in "abc"})
    new_state = mon.state_dict()
    again = CumulativeDiscrepancy(gamma)
    again.load_state_dict(new_state)
    assert again.values == mon.values and again.weaker == mon.weaker
    with pytest.raises(ValueError, match="kept for modalities"):
        again.update({"x": torch.ones(2), "y": torch.ones(2)})


def test_dus_replay_state_of_the_two_modality_version_loads_into_the_policy():
    pol = build_replay(parse_settings("replay", {"policy": "dus", "gamma": 0.5, "epsilon": 0.0}), 10, modalities=("audio", "video"))
    pol.load_state_dict({"monitor": {"value": 1.2, "steps": 3}})  # audio led: D = 1.2
    assert pol.monitor.weaker == "video" and pol.monitor.imbalance == pytest.approx(0.6)


def test_dus_loss_trains_the_weaker_modalitys_own_head_at_three_modalities():
    from edge_runtime.learning.buffer import ReplayBuffer
    from edge_runtime.core.config import BufferConfig

    model = model3()
    samples = samples3(20)
    buf = ReplayBuffer(BufferConfig(max_items=50, retention="reservoir"))
    for s in samples:
        buf.offer(s)
    pol = build_replay(parse_settings("replay", {"policy": "dus", "gamma": 0.0, "epsilon": 0.0, "weight": 0.7}), 8)
    pol.observe(ctx_of({"a": torch.full((4,), 0.9), "b": torch.full((4,), 0.8), "c": torch.full((4,), 0.2)}))
    # d = (0.9 - 0.5, 0.8 - 0.55, 0.2 - 0.85); iota = (2/3)(0.4 + 0.65) = 0.7; n = round(8 * 0.7)
    assert pol.monitor.weaker == "c" and pol.monitor.imbalance == pytest.approx(0.7)
    plan = pol.plan(buf, 8, lambda s: None)
    assert list(plan.extra) == ["c"] and len(plan.extra["c"]) == round(8 * 0.7)

    def forward(s):
        b = collate(list(s), model.modalities)
        return b, model(*b.inputs())

    step = UpdateStep(incoming=lambda: None, present=torch.ones(CLASSES, dtype=torch.bool), plan=plan, selection=None, forward_samples=forward)
    got = pol.loss(step)
    b = collate(plan.extra["c"], model.modalities)
    want = 0.7 * F.cross_entropy(model(*b.inputs()).unimodal["c"], b.labels)
    assert torch.allclose(got, want)
    got.backward()
    assert model.fusion.heads["c"].weight.grad.abs().sum() > 0
    assert model.fusion.heads["a"].weight.grad is None  # only the weaker modality's head (and encoder)


# ---------------------------------------------------------------- BMMAL
def brute_force_shapley(fusion, z):
    """Shapley values by enumerating every order of the players (float64)."""
    names = list(z)
    n = len(names)
    with torch.no_grad():
        probs = F.softmax(fusion(z).double(), dim=1)
        y_hat = probs.argmax(dim=1, keepdim=True)

        def v(coalition):
            zs = {k: (t if k in coalition else torch.zeros_like(t)) for k, t in z.items()}
            return F.softmax(fusion(zs).double(), dim=1).gather(1, y_hat).squeeze(1)

        phi = torch.zeros(probs.shape[0], n, dtype=torch.float64)
        for order in itertools.permutations(range(n)):
            before: set = set()
            for i in order:
                phi[:, i] += v(before | {names[i]}) - v(before)
                before.add(names[i])
    return phi / math.factorial(n), probs


@pytest.mark.parametrize("mods,fusion", [(3, "gated"), (3, "sum"), (3, "concat"), (4, "gated"), (4, "concat")])
def test_shapley_values_equal_brute_force_over_permutations(mods, fusion):
    modalities = dict(MODS3, **({"d": {"kind": "vector", "channels": 4}} if mods == 4 else {}))
    torch.manual_seed(9)
    model = build_model(config_from_dict({"modalities": modalities, "model": {"num_classes": 5, "fusion": fusion, "embed_dim": 6}}))
    model.eval()
    z = {k: torch.randn(11, 6) * 2 for k in modalities}
    with torch.no_grad():
        delta, probs = shapley_values(lambda zs: model.fusion(zs)[0], z)
    want, want_probs = brute_force_shapley(lambda zs: model.fusion(zs)[0], z)
    assert delta.shape == (11, mods)
    assert torch.allclose(delta.double(), want, atol=1e-6), (delta, want)
    assert torch.allclose(probs.double(), want_probs, atol=1e-6)
    v_full = want_probs.max(1).values
    with torch.no_grad():
        v_empty = F.softmax(model.fusion({k: torch.zeros_like(t) for k, t in z.items()})[0].double(), 1).gather(1, want_probs.argmax(1, keepdim=True)).squeeze(1)
    assert torch.allclose(delta.double().sum(1), v_full - v_empty, atol=1e-6)  # efficiency
    assert float(delta.abs().max()) > 1e-4  # not all zero


def test_shapley_at_two_modalities_equals_the_closed_form_and_brute_force():
    torch.manual_seed(10)
    model = build_model(Config().model.model_copy(update={"embed_dim": 8, "fusion": "gated"}))
    model.eval()
    z = {"audio": torch.randn(9, 8), "video": torch.randn(9, 8)}
    fusion = lambda zs: model.fusion(zs)[0]  # noqa: E731
    with torch.no_grad():
        d1, d2, probs = shapley_two_modalities(lambda a, b: fusion({"audio": a, "video": b}), z["audio"], z["video"])
        delta, got_probs = shapley_values(fusion, z)
        enumerated, _ = shapley_enumerated(fusion, z)
    assert torch.equal(delta[:, 0], d1) and torch.equal(delta[:, 1], d2) and torch.equal(got_probs, probs)
    assert torch.allclose(enumerated, delta, atol=1e-7)  # the general enumeration agrees with the closed form
    assert torch.allclose(delta.double(), brute_force_shapley(fusion, z)[0], atol=1e-6)


def test_contributions_weights_and_embedding_at_two_are_the_old_formulas_and_at_three_by_hand():
    torch.manual_seed(11)
    d = torch.randn(30, 2)
    d[4] = 0.0
    phi = contributions(d)
    a, b = d[:, 0].abs(), d[:, 1].abs()  # the two-modality formulas
    tot = a + b
    safe = torch.where(tot > 0, tot, torch.ones_like(tot))
    old1, old2 = torch.where(tot > 0, a / safe, torch.full_like(tot, 0.5)), torch.where(tot > 0, b / safe, torch.full_like(tot, 0.5))
    assert torch.equal(phi[:, 0], old1) and torch.equal(phi[:, 1], old2)
    w = modality_weights(phi)
    rho = (old1 - old2).abs()
    assert torch.equal(w[:, 0], torch.where(old1 >= old2, torch.ones_like(rho), 1 - rho))
    assert torch.equal(w[:, 1], torch.where(old2 >= old1, torch.ones_like(rho), 1 - rho))

    d3 = torch.tensor([[0.3, -0.1, 0.1], [0.0, 0.0, 0.0], [0.2, 0.2, -0.1]])
    phi3 = contributions(d3)
    assert phi3.tolist() == [pytest.approx([0.6, 0.2, 0.2]), pytest.approx([1 / 3] * 3), pytest.approx([0.4, 0.4, 0.2])]
    w3 = modality_weights(phi3)
    assert w3.tolist() == [pytest.approx([1.0, 0.6, 0.6]), pytest.approx([1.0] * 3), pytest.approx([1.0, 1.0, 0.8])]
    p = torch.tensor([[0.1, 0.6, 0.3]])
    zs = [torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0]]), torch.tensor([[-1.0, 0.5, 2.0]])]
    ws = torch.tensor([[1.0, 0.5, 0.25]])
    emb = gradient_embedding(p, {"a": zs[0], "b": zs[1], "c": zs[2]}, ws)
    err = np.array([0.1, 0.6 - 1, 0.3])
    want = np.concatenate([ws[0, m].item() * np.outer(err, zs[m][0].numpy()).ravel() for m in range(3)])
    assert emb[0].numpy() == pytest.approx(want, abs=1e-6)


def test_bmmal_policy_at_three_modalities():
    model = model3(fusion="gated")
    samples = samples3(16)
    batch = collate(samples, model.modalities)
    with torch.no_grad():
        out = model(*batch.inputs())
    ctx = StepContext(batch=batch, labels=batch.labels, output=out, p={k: torch.ones(16) for k in model.modalities}, model=model)
    sel = build_policy(parse_settings("selection", {"policy": "bmmal", "keep_ratio": 0.25}), seed=1).select(ctx)
    assert len(sel.indices) == 4 and len(set(sel.indices.tolist())) == 4
    assert model.fusion.training  # put back in train mode after the coalitions ran in eval mode
    model.eval()
    phi, _ = brute_force_shapley(lambda zs: model.fusion(zs)[0], out.z)
    a = phi.abs()
    share = torch.where(a.sum(1, keepdim=True) > 0, a / a.sum(1, keepdim=True), torch.full_like(a, 1 / 3))
    assert torch.allclose(sel.deviation.double(), share.max(1).values - share.min(1).values, atol=1e-5)


def test_bmmal_refuses_five_modalities_in_one_line():
    cfg = parse_settings("selection", {"policy": "bmmal"})
    with pytest.raises(ValueError) as err:
        build_policy(cfg, modalities=("a", "b", "c", "d", "e"))
    assert str(err.value) == "bmmal computes exact Shapley values over 2^N coalitions; N = 5 modalities declared, at most 4 supported"
    build_policy(cfg, modalities=("a", "b", "c", "d"))


# ---------------------------------------------------------------- GraNd
def _per_sample_norms(model, samples, params_of, fusion_only):
    norms = []
    for s in samples:
        model.zero_grad(set_to_none=True)
        b = collate([s], model.modalities)  # alone: no padding at all
        if fusion_only:
            with torch.no_grad():
                z = model(*b.inputs()).z
            logits = model.fusion(z)[0]
        else:
            logits = model(*b.inputs()).logits
        F.cross_entropy(logits, b.labels).backward()
        norms.append(math.sqrt(sum(float(p.grad.pow(2).sum()) for p in params_of(model) if p.grad is not None)))
    return torch.tensor(norms, dtype=torch.float64)


@pytest.mark.parametrize("fusion", ["sum", "concat", "gated"])
def test_grand_last_layer_at_three_modalities_matches_autograd(fusion):
    model = model3(fusion=fusion)
    samples = samples3(7, seed=12)
    batch = collate(samples, model.modalities)
    got = grand(model, batch.inputs(), batch.labels, "last_layer")
    want = _per_sample_norms(model, samples, lambda m: m.fusion.parameters(), fusion_only=True)
    assert torch.allclose(got.double(), want, rtol=1e-4, atol=1e-6), (got, want)
    with torch.no_grad():
        z = model(*batch.inputs()).z
    assert torch.allclose(grand(model, batch.inputs(), batch.labels, "last_layer", z=z), got)


def test_grand_all_at_three_modalities_trims_each_modality_per_sample():
    model = model3()
    samples = samples3(5, seed=13)
    batch = collate(samples, model.modalities)
    assert len(batch.inputs()) == 6 and len({int(n) for n in batch.lengths["a"]}) > 1  # padded, lengths differ
    got = grand(model, batch.inputs(), batch.labels, "all")
    want = _per_sample_norms(model, samples, lambda m: m.parameters(), fusion_only=False)
    assert torch.allclose(got.double(), want, rtol=1e-4, atol=1e-6), (got, want)


# ---------------------------------------------------------------- losses and offline
def test_unimodal_ce_sums_every_modalitys_head():
    torch.manual_seed(14)
    out = ModelOutput(torch.randn(6, 4), {k: torch.randn(6, 4) for k in "abc"}, {k: torch.randn(6, 2) for k in "abc"})
    y = torch.randint(0, 4, (6,))
    step = UpdateStep(incoming=lambda: Forwarded(out, y), present=torch.ones(4, dtype=torch.bool), plan=ReplayPlan([]), selection=None,
                      forward_samples=None)
    want = 0.3 * sum(F.cross_entropy(out.unimodal[k], y) for k in "abc")
    assert torch.allclose(UnimodalCE(0.3)(step), want)
    two = ModelOutput(out.logits, {k: out.unimodal[k] for k in "ab"}, {})
    step2 = UpdateStep(incoming=lambda: Forwarded(two, y), present=step.present, plan=ReplayPlan([]), selection=None, forward_samples=None)
    assert torch.equal(UnimodalCE(0.3)(step2), 0.3 * (F.cross_entropy(out.unimodal["a"].float(), y) + F.cross_entropy(out.unimodal["b"].float(), y)))


def test_offline_context_and_accuracy_are_keyed_by_modality_at_three():
    cfg = config3()
    torch.manual_seed(0)
    model = build_model(cfg)
    samples = samples3(24, seed=15)
    ctx = score_context(model, samples, cfg)
    assert ctx.modalities == ("a", "b", "c") and tuple(ctx.output.z) == ("a", "b", "c")
    for k in "abc":
        assert torch.allclose(ctx.p[k], prototype_confidence(ctx.output.z[k], ctx.labels, CLASSES))
    lin = score_context(model, samples, config3(prototypes={"confidence": "linear"}))
    for k in "abc":
        assert torch.allclose(lin.p[k], F.softmax(lin.output.unimodal[k], 1).gather(1, lin.labels[:, None]).squeeze(1))
    acc = accuracy(model, samples)
    assert set(acc) == {"accuracy", "a_accuracy", "b_accuracy", "c_accuracy"}
    y = torch.tensor([s.label for s in samples])
    assert acc["b_accuracy"] == pytest.approx(float((ctx.output.unimodal["b"].argmax(1) == y).float().mean()))
    for strategy in strategies():
        keep = select_subset(strategy_settings(cfg, strategy, 0.5), model, samples, cfg, 0)
        assert 1 <= len(keep) <= 24 and len(set(keep.tolist())) == len(keep)


# ---------------------------------------------------------------- every policy through the learner
POLICIES = [("selection", n) for n in names("selection")] + [("replay", n) for n in names("replay")]


def _run(cfg: Config, samples: list[Sample]) -> Learner:
    learner = Learner(cfg)
    verdicts = []
    for i in range(0, len(samples), 16):
        verdicts += learner.observe(samples[i : i + 16])
    assert len(verdicts) == len(samples) and all(v in ("admitted", "trained", "skipped") for v in verdicts), set(verdicts)
    assert learner.stats.updates == len(samples) // 16 and 0 < len(learner.buffer) <= 20
    clone = Learner(cfg)
    clone.load_state_dict(learner.state_dict())
    assert clone.summary() == learner.summary()
    return learner


@pytest.mark.parametrize("kind,name", POLICIES)
def test_every_policy_runs_through_the_learner_at_three_modalities(kind, name):
    settings = {"policy": name, **({"gamma": 0.0, "epsilon": 0.0} if name == "dus" else {})}
    learner = _run(config3(**{kind: settings, "buffer": {"max_items": 20}}), samples3(48, seed=16))
    ev = learner.evaluate(samples3(16, seed=17))
    assert set(ev["modality_accuracy"]) == {"a", "b", "c"}
    if name == "dus":
        assert learner.replay.monitor.modalities == ("a", "b", "c") and learner.replay.monitor.steps == 3


@pytest.mark.parametrize("kind,name", POLICIES)
def test_every_policy_runs_through_the_learner_on_the_default_audio_video(synthetic, kind, name):
    from tests.support.streams import stream

    _run(config_from_dict({kind: {"policy": name}, "buffer": {"max_items": 20}}), stream(synthetic, range(32)))


def test_mbs_retention_ranks_the_spread_the_policy_handed_over_at_three_modalities():
    """``buffer.retention: mbs`` consumes only ``Selection.deviation``: at N = 3 the stored scores are the
    spreads ``max log p - min log p`` that ``mbs-pooled`` computed for those samples."""
    cfg = config3(selection={"policy": "mbs-pooled", "keep_ratio": 1.0}, buffer={"max_items": 12, "retention": "mbs"})
    learner = Learner(cfg)
    seen: dict = {}
    policy = learner.policy
    select = policy.select

    def recording(ctx):
        out = select(ctx)
        s = spread(ctx.p)
        for j, row in enumerate(ctx.labels.tolist()):
            seen.setdefault(len(seen), (row, float(s[j])))
        return out

    policy.select = recording
    samples = samples3(48, seed=18)
    for i in range(0, 48, 16):
        learner.observe(samples[i : i + 16])
    buf = learner.buffer
    assert len(buf) == 12
    for key in buf.keys():
        seq = buf.get(key).seq
        assert buf.score(key) == pytest.approx(seen[seq][1], rel=1e-6)


def test_grand_last_layer_with_the_film_head_at_two_modalities(synthetic):
    from tests.support.streams import stream

    torch.manual_seed(0)
    model = build_model(Config().model.model_copy(update={"embed_dim": 8, "fusion": "film", "audio_channels": 8, "tiny_channels": 4}))
    samples = stream(synthetic, range(5))
    batch = collate(samples, model.modalities)
    got = grand(model, batch.inputs(), batch.labels, "last_layer")
    want = _per_sample_norms(model, samples, lambda m: m.fusion.parameters(), fusion_only=True)
    assert torch.allclose(got.double(), want, rtol=1e-4, atol=1e-6), (got, want)
