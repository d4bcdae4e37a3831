"""apply_trigger, Trigger and patch_trigger against elementwise reference computations."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neuralcleanse.data.trigger import Trigger, apply_trigger, patch_trigger


def reference_stamp(x: np.ndarray, m: np.ndarray, p: np.ndarray) -> np.ndarray:
    """(1 - m)·x + m·p in float64 numpy, with numpy broadcasting."""
    return (1.0 - m) * x + m * p


def test_apply_trigger_matches_formula_single_batch() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 7, 6, generator=g)
    m = torch.rand(7, 6, generator=g)
    p = torch.rand(3, 7, 6, generator=g)
    out = apply_trigger(x, m, p)
    assert out.shape == (5, 3, 7, 6)
    expected = reference_stamp(x.double().numpy(), m.double().numpy()[None, None], p.double().numpy()[None])
    np.testing.assert_allclose(out.double().numpy(), expected, atol=1e-6)


def test_apply_trigger_broadcasts_over_label_block() -> None:
    """The reverse engineer's call: x (1,B,C,H,W), masks (K,1,1,H,W), patterns (K,1,C,H,W)."""
    g = torch.Generator().manual_seed(1)
    k, b, c, h, w = 4, 6, 3, 5, 5
    x = torch.rand(b, c, h, w, generator=g)
    masks = torch.rand(k, 1, h, w, generator=g)
    patterns = torch.rand(k, c, h, w, generator=g)
    out = apply_trigger(x[None], masks[:, None], patterns[:, None])
    assert out.shape == (k, b, c, h, w)
    for i in range(k):
        for j in range(b):
            for ch in range(c):
                expected = (1 - masks[i, 0]) * x[j, ch] + masks[i, 0] * patterns[i, ch]
                torch.testing.assert_close(out[i, j, ch], expected, atol=1e-6, rtol=0)


def test_mask_is_shared_across_colour_channels() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 4, 4, generator=g)
    m = torch.rand(1, 4, 4, generator=g)
    p = torch.rand(3, 4, 4, generator=g)
    out = apply_trigger(x, m, p)
    m3 = m.expand(3, 4, 4)
    torch.testing.assert_close(out, (1 - m3) * x + m3 * p, atol=1e-6, rtol=0)
    # The same result from a 2-D mask.
    torch.testing.assert_close(apply_trigger(x, m[0], p), out, atol=0, rtol=0)


def test_mask_zero_and_one() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 3, 6, 6, generator=g)
    p = torch.rand(3, 6, 6, generator=g)
    torch.testing.assert_close(apply_trigger(x, torch.zeros(6, 6), p), x, atol=0, rtol=0)
    torch.testing.assert_close(apply_trigger(x, torch.ones(6, 6), p), p.expand_as(x), atol=1e-7, rtol=0)


def test_apply_trigger_gradients() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, 1, 3, 3, generator=g)
    m = torch.rand(3, 3, generator=g, requires_grad=True)
    p = torch.rand(1, 3, 3, generator=g, requires_grad=True)
    apply_trigger(x, m, p).sum().backward()
    # d/dm = sum over batch of (p - x); d/dp = sum over batch of m
    torch.testing.assert_close(m.grad, (p.detach() - x).sum((0, 1)), atol=1e-6, rtol=0)
    torch.testing.assert_close(p.grad, (2 * m.detach())[None], atol=1e-6, rtol=0)


def test_trigger_apply_and_properties() -> None:
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(1, 4, 4, generator=g)  # (1,H,W) is accepted and squeezed
    pattern = torch.rand(3, 4, 4, generator=g)
    trig = Trigger(mask, pattern)
    assert trig.mask.shape == (4, 4)
    assert trig.l1 == pytest.approx(float(mask.sum()), rel=1e-6)
    x = torch.rand(2, 3, 4, 4, generator=g)
    torch.testing.assert_close(trig.apply(x), apply_trigger(x, mask[0], pattern))
    back = Trigger.from_dict(trig.to_dict())
    torch.testing.assert_close(back.mask, trig.mask)
    torch.testing.assert_close(back.pattern, trig.pattern)


def test_trigger_shape_errors() -> None:
    with pytest.raises(ValueError):
        Trigger(torch.zeros(4, 4), torch.zeros(1, 5, 5))
    with pytest.raises(ValueError):
        Trigger(torch.zeros(2, 4, 4), torch.zeros(2, 4, 4))


def _rows_cols(mask: torch.Tensor) -> tuple[list[int], list[int]]:
    rows = torch.nonzero(mask.sum(1)).flatten().tolist()
    cols = torch.nonzero(mask.sum(0)).flatten().tolist()
    return rows, cols


@pytest.mark.parametrize(
    "position,rows,cols",
    [
        ("bottom-right", [11, 12, 13, 14], [11, 12, 13, 14]),  # H-5..H-2 for size 4, margin 1, H=W=16
        ("bottom-left", [11, 12, 13, 14], [1, 2, 3, 4]),
        ("top-right", [1, 2, 3, 4], [11, 12, 13, 14]),
        ("top-left", [1, 2, 3, 4], [1, 2, 3, 4]),
        ("center", [6, 7, 8, 9], [6, 7, 8, 9]),
        ((3, 9), [3, 4, 5, 6], [9, 10, 11, 12]),
    ],
)
def test_patch_positions(position, rows: list[int], cols: list[int]) -> None:
    h = w = 16
    trig = patch_trigger((1, h, w), size=4, position=position, margin=1)
    assert trig.mask.shape == (h, w)
    assert trig.l1 == 16.0
    assert _rows_cols(trig.mask) == (rows, cols)
    assert set(trig.mask.unique().tolist()) == {0.0, 1.0}
    # The white patch exactly where the mask is one, black elsewhere.
    torch.testing.assert_close(trig.pattern[0], trig.mask)


def test_bottom_right_general_sizes() -> None:
    for h in (8, 12, 28):
        trig = patch_trigger((1, h, h), size=4)
        rows, cols = _rows_cols(trig.mask)
        assert rows == list(range(h - 5, h - 1)) and cols == rows
    trig = patch_trigger((1, 8, 10), size=2, margin=0)
    assert _rows_cols(trig.mask) == ([6, 7], [8, 9])


def test_patch_colour_per_channel() -> None:
    trig = patch_trigger((3, 10, 10), size=3, position="top-left", colour=(0.2, 0.5, 0.9), margin=2)
    inside = trig.mask.bool()
    for ch, value in enumerate((0.2, 0.5, 0.9)):
        assert torch.allclose(trig.pattern[ch][inside], torch.full((9,), value))
        assert float(trig.pattern[ch][~inside].abs().sum()) == 0.0
    x = torch.full((1, 3, 10, 10), 0.3)
    stamped = trig.apply(x)
    assert torch.allclose(stamped[0, :, 2, 2], torch.tensor([0.2, 0.5, 0.9]))
    assert torch.allclose(stamped[0, :, 0, 0], torch.full((3,), 0.3))


def test_patch_grey_colour_on_rgb() -> None:
    trig = patch_trigger((3, 8, 8), size=2, colour=0.4)
    assert torch.allclose(trig.pattern[:, 5:7, 5:7], torch.full((3, 2, 2), 0.4))


def test_patch_pattern_image() -> None:
    img = np.arange(9, dtype=np.float32).reshape(3, 3) / 10.0
    trig = patch_trigger((3, 9, 9), size=3, position="bottom-left", pattern_image=img)
    for ch in range(3):
        np.testing.assert_allclose(trig.pattern[ch, 5:8, 1:4].numpy(), img)
    assert float(trig.pattern.sum()) == pytest.approx(3 * img.sum(), rel=1e-6)
    rgb = np.stack([img, img * 0.5, img * 0.1])
    trig = patch_trigger((3, 9, 9), size=3, position=(0, 0), pattern_image=rgb)
    np.testing.assert_allclose(trig.pattern[:, 0:3, 0:3].numpy(), rgb, atol=1e-7)


def test_patch_errors() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        patch_trigger((1, 8, 8), size=8, margin=1)
    with pytest.raises(ValueError, match="does not fit"):
        patch_trigger((1, 8, 8), size=0)
    with pytest.raises(ValueError, match="outside"):
        patch_trigger((1, 8, 8), size=4, position=(6, 0))
    with pytest.raises(ValueError, match="unknown position"):
        patch_trigger((1, 8, 8), size=2, position="middle-ish")
    with pytest.raises(ValueError, match="colour needs"):
        patch_trigger((3, 8, 8), size=2, colour=(0.1, 0.2))
    with pytest.raises(ValueError, match="colour needs"):
        patch_trigger((1, 8, 8), size=2, colour=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        patch_trigger((1, 8, 8), size=2, colour=1.5)
    with pytest.raises(ValueError, match="pattern image"):
        patch_trigger((1, 8, 8), size=2, pattern_image=np.zeros((3, 3)))


# ----------------------------------------------------------------------------------------------
# Triggers beyond the mask-and-pattern form: blended and frequency-domain


def dct2(img: np.ndarray) -> np.ndarray:
    """Orthonormal 2-D DCT-II by matrix products, as a reference independent of `dct_basis`."""
    def matrix(n: int) -> np.ndarray:
        k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
        d[0] /= np.sqrt(2.0)
        return d
    return matrix(img.shape[0]) @ img @ matrix(img.shape[1]).T


def test_frequency_trigger_lives_on_its_coefficients() -> None:
    from neuralcleanse.attacks import frequency_trigger

    trig = frequency_trigger((3, 16, 12), frequencies=((5, 7), (15, 11)), amplitude=0.1)
    delta = trig.delta.double().numpy()
    assert delta.shape == (3, 16, 12)
    assert np.abs(delta).max() == pytest.approx(0.1, abs=1e-6)
    assert np.allclose(delta[0], delta[1]) and np.allclose(delta[0], delta[2])
    energy = np.abs(dct2(delta[0]))
    on = {(5, 7), (15, 11)}
    assert all(energy[u, v] > 0.05 for u, v in on)
    off = np.ones_like(energy, dtype=bool)
    for u, v in on:
        off[u, v] = False
    assert energy[off].max() < 1e-6
    with pytest.raises(ValueError, match="frequency"):
        frequency_trigger((1, 8, 8), frequencies=((0, 0),))
    with pytest.raises(ValueError, match="frequency"):
        frequency_trigger((1, 8, 8), frequencies=((8, 1),))


def test_additive_trigger_adds_and_clips() -> None:
    from neuralcleanse.attacks import AdditiveTrigger

    delta = torch.tensor([[[0.3, -0.3], [0.0, 0.9]]])
    x = torch.tensor([[[[0.5, 0.1], [0.2, 0.5]]]])
    out = AdditiveTrigger(delta).apply(x)
    torch.testing.assert_close(out, torch.tensor([[[[0.8, 0.0], [0.2, 1.0]]]]))
    assert AdditiveTrigger(delta).l1 == pytest.approx(1.5)
    with pytest.raises(ValueError, match="C,H,W"):
        AdditiveTrigger(torch.zeros(2, 2))


def test_blended_trigger_mixes_every_pixel() -> None:
    from neuralcleanse.attacks import blended_trigger

    trig = blended_trigger((3, 6, 5), alpha=0.2, seed=4)
    assert torch.all(trig.mask == 0.2) and trig.l1 == pytest.approx(0.2 * 30)
    x = torch.rand(2, 3, 6, 5, generator=torch.Generator().manual_seed(0))
    expected = reference_stamp(x.double().numpy(), 0.2, trig.pattern.double().numpy()[None])
    np.testing.assert_allclose(trig.apply(x).double().numpy(), expected, atol=1e-6)
    assert torch.equal(trig.pattern, blended_trigger((3, 6, 5), alpha=0.2, seed=4).pattern)
    with pytest.raises(ValueError, match="alpha"):
        blended_trigger((1, 4, 4), alpha=0.0)


def test_trigger_from_dict_round_trips_both_forms() -> None:
    from neuralcleanse.attacks import AdditiveTrigger, frequency_trigger, trigger_from_dict

    freq = frequency_trigger((1, 8, 8), frequencies=((3, 4),))
    back = trigger_from_dict(freq.to_dict())
    assert isinstance(back, AdditiveTrigger) and torch.equal(back.delta, freq.delta)
    patch = patch_trigger((1, 8, 8), 2)
    back = trigger_from_dict({k: v.numpy() for k, v in patch.to_dict().items()})
    assert isinstance(back, Trigger) and torch.equal(back.mask, patch.mask)
