"""EMA class prototypes (the learning step, step 2, docs/design.md) against direct computations written here."""

import numpy as np
import pytest
import torch

from edge_runtime.learning.prototypes import ModalityPrototypes, Prototypes, UnseenClassError


def _sequential_ema(batches, num_classes, dim, a):
    """Plain per-sample loop: first sample of a class initialises it, then c <- a*c + (1-a)*z."""
    protos = np.zeros((num_classes, dim))
    seen = np.zeros(num_classes, dtype=bool)
    for z, y in batches:
        for zi, yi in zip(z, y):
            if not seen[yi]:
                protos[yi] = zi
                seen[yi] = True
            else:
                protos[yi] = a * protos[yi] + (1 - a) * zi
    return protos, seen


def _direct_confidence(z, y, protos, seen, log=False):
    """softmax_k(-||z - c_k||) over the seen classes k, read at y."""
    classes = np.flatnonzero(seen)
    out = []
    for zi, yi in zip(z, y):
        logits = np.array([-np.sqrt(np.sum((zi - protos[k]) ** 2)) for k in classes])
        p = np.exp(logits - logits.max())
        p /= p.sum()
        value = p[list(classes).index(yi)]
        out.append(np.log(value) if log else value)
    return np.array(out)


@pytest.mark.parametrize("a", [0.0, 0.5, 0.9])
def test_vectorised_ema_matches_sequential_loop(a):
    rng = np.random.default_rng(1)
    num_classes, dim = 6, 5
    # interleaved classes, repeated within a batch; class 5 first appears in the third batch,
    # class 4 never appears
    labels = [np.array([0, 1, 0, 2, 1, 0, 0]), np.array([2, 2, 3, 0, 1]), np.array([5, 3, 5, 5, 0, 2, 5, 1])]
    batches = [(rng.normal(size=(len(y), dim)), y) for y in labels]
    protos = Prototypes(num_classes, dim, a, dtype=torch.float64)
    for step, (z, y) in enumerate(batches):
        protos.update(torch.tensor(z), torch.tensor(y))
        want, seen = _sequential_ema(batches[: step + 1], num_classes, dim, a)
        np.testing.assert_allclose(protos.prototypes.numpy(), want, rtol=1e-12, atol=1e-12)
        assert protos.seen.numpy().tolist() == seen.tolist()
    assert not bool(protos.seen[4])


def test_ema_float32_long_run_matches_loop():
    rng = np.random.default_rng(2)
    protos = Prototypes(4, 3, 0.9)
    batches = []
    for _ in range(20):
        y = rng.integers(0, 4, size=16)
        batches.append((rng.normal(size=(16, 3)).astype(np.float32), y))
        protos.update(torch.tensor(batches[-1][0]), torch.tensor(y))
    want, _ = _sequential_ema(batches, 4, 3, 0.9)
    np.testing.assert_allclose(protos.prototypes.numpy(), want, rtol=1e-5, atol=1e-5)


def test_first_seen_initialises_to_the_sample():
    protos = Prototypes(3, 2, 0.9)
    protos.update(torch.tensor([[2.0, -4.0]]), torch.tensor([1]))
    assert protos.prototypes[1].tolist() == [2.0, -4.0]
    assert protos.seen.tolist() == [False, True, False]
    assert protos.is_seen(torch.tensor([0, 1, 1])).tolist() == [False, True, True]


def test_confidence_matches_numpy_softmax_over_seen_classes_only():
    rng = np.random.default_rng(3)
    protos = Prototypes(7, 4, 0.8, dtype=torch.float64)
    y_fit = np.array([0, 2, 2, 5, 6, 0])  # classes 1, 3, 4 never seen
    protos.update(torch.tensor(rng.normal(size=(6, 4))), torch.tensor(y_fit))
    z = rng.normal(size=(9, 4)) * 2
    y = rng.choice([0, 2, 5, 6], size=9)
    c = protos.prototypes.numpy()
    seen = protos.seen.numpy()
    got = protos.confidence(torch.tensor(z), torch.tensor(y)).numpy()
    np.testing.assert_allclose(got, _direct_confidence(z, y, c, seen), rtol=1e-10)
    got_log = protos.log_confidence(torch.tensor(z), torch.tensor(y)).numpy()
    np.testing.assert_allclose(got_log, _direct_confidence(z, y, c, seen, log=True), rtol=1e-10)


def test_log_confidence_is_finite_where_softmax_underflows():
    protos = Prototypes(2, 1, 0.5)
    protos.update(torch.tensor([[0.0], [1000.0]]), torch.tensor([0, 1]))
    z = torch.tensor([[0.0]])
    assert float(protos.confidence(z, torch.tensor([1]))) == 0.0
    assert float(protos.log_confidence(z, torch.tensor([1]))) == pytest.approx(-1000.0)


def test_unseen_class_raises_and_names_it():
    protos = Prototypes(5, 2, 0.9)
    protos.update(torch.ones(2, 2), torch.tensor([0, 3]))
    with pytest.raises(UnseenClassError) as err:
        protos.confidence(torch.zeros(3, 2), torch.tensor([0, 4, 1]))
    assert err.value.classes == [1, 4]
    assert "[1, 4]" in str(err.value)
    assert isinstance(err.value, ValueError)
    with pytest.raises(UnseenClassError):
        Prototypes(5, 2, 0.9).log_confidence(torch.zeros(1, 2), torch.tensor([0]))


def test_single_seen_class_gives_confidence_one():
    protos = Prototypes(4, 3, 0.9)
    protos.update(torch.randn(3, 3), torch.tensor([2, 2, 2]))
    conf = protos.confidence(torch.randn(5, 3) * 10, torch.full((5,), 2))
    assert conf.tolist() == [1.0] * 5


def test_bad_inputs_are_rejected():
    protos = Prototypes(3, 2, 0.9)
    with pytest.raises(ValueError, match="out of range"):
        protos.update(torch.zeros(1, 2), torch.tensor([3]))
    with pytest.raises(ValueError, match="shape"):
        protos.update(torch.zeros(2, 3), torch.tensor([0, 1]))
    protos.update(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))  # empty batch: no-op
    assert not bool(protos.seen.any())


def test_state_dict_round_trip():
    protos = Prototypes(4, 3, 0.7)
    protos.update(torch.randn(6, 3), torch.tensor([0, 1, 1, 3, 0, 3]))
    state = protos.state_dict()
    assert set(state) == {"prototypes", "seen"} and all(isinstance(v, torch.Tensor) for v in state.values())
    other = Prototypes(4, 3, 0.7)
    other.load_state_dict(state)
    z, y = torch.randn(5, 3), torch.tensor([0, 1, 3, 3, 1])
    assert torch.equal(other.confidence(z, y), protos.confidence(z, y))
    protos.update(z, y)
    other.update(z, y)
    assert torch.equal(other.prototypes, protos.prototypes)
    with pytest.raises(ValueError):
        Prototypes(5, 3, 0.7).load_state_dict(state)


def test_modality_prototypes():
    rng = np.random.default_rng(4)
    mp = ModalityPrototypes(5, {"audio": 3, "video": 2}, 0.9).to("cpu")
    za, zv = rng.normal(size=(6, 3)).astype(np.float32), rng.normal(size=(6, 2)).astype(np.float32)
    y = np.array([0, 1, 0, 4, 4, 1])
    mp.update({"audio": torch.tensor(za), "video": torch.tensor(zv)}, torch.tensor(y))
    for name, z, dim in (("audio", za, 3), ("video", zv, 2)):
        want, seen = _sequential_ema([(z, y)], 5, dim, 0.9)
        np.testing.assert_allclose(mp[name].prototypes.numpy(), want, rtol=1e-6, atol=1e-6)
        got = mp.confidence(name, torch.tensor(z), torch.tensor(y)).numpy()
        np.testing.assert_allclose(got, _direct_confidence(z, y, want, seen), rtol=1e-5)
    with pytest.raises(UnseenClassError, match="video"):
        mp.confidence("video", torch.tensor(zv[:1]), torch.tensor([2]))
    other = ModalityPrototypes(5, {"audio": 3, "video": 2}, 0.9)
    other.load_state_dict(mp.state_dict())
    assert torch.equal(other["audio"].prototypes, mp["audio"].prototypes)
    assert torch.equal(other["video"].seen, mp["video"].seen)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_prototypes_on_device_match_float64_reference(device):
    """Runs on every device present (CUDA on a GPU box), against a float64 CPU computation."""
    z, y = torch.randn(32, 8), torch.randint(0, 5, (32,))
    on_device = Prototypes(5, 8, 0.9).to(device)
    on_device.update(z.to(device), y.to(device))
    want, seen = _sequential_ema([(z.double().numpy(), y.numpy())], 5, 8, 0.9)
    np.testing.assert_allclose(on_device.prototypes.cpu().double().numpy(), want, rtol=1e-5, atol=1e-6)
    got = on_device.confidence(z.to(device), y.to(device)).cpu().double().numpy()
    np.testing.assert_allclose(got, _direct_confidence(z.double().numpy(), y.numpy(), want, seen), rtol=1e-4, atol=1e-6)
