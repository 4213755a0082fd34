import pytest
import torch

from fader_kit.maskers.registry import create_masker
from fader_kit_plugins.patch_stats import PatchStatsConfig, PatchStatsMasker


def _aligned_objects(n: int, seed: int = 0) -> torch.Tensor:
    """A bright square always at the same place, plus mild noise: per-position statistics fit."""
    g = torch.Generator().manual_seed(seed)
    x = 0.2 + 0.05 * torch.rand(n, 3, 32, 32, generator=g)
    x[:, :, 8:24, 8:24] += 0.6
    return x.clamp(0, 1)


def test_position_mode_is_chosen_for_aligned_objects_and_flags_a_pasted_defect():
    masker = create_masker("patch_stats").fit(_aligned_objects(30))
    assert masker.mode == "position" and masker.threshold is not None
    test = _aligned_objects(2, seed=5)
    test[1, :, 0:8, 0:8] = 0.9  # a bright stain where the background should be
    scores = masker.score_map(test)
    assert scores.shape == (2, 1, 32, 32)
    assert float(scores[1, 0, :8, :8].min()) > float(scores[1, 0, 16:, 16:].max())
    mask = masker.mask(test)
    assert mask.dtype == torch.bool and bool(mask[1, 0, :8, :8].all())
    assert float(mask[0].float().mean()) <= 2 / 16  # a 0.99 quantile leaves few normal patches masked


def test_pooled_mode_for_textures_is_shift_invariant():
    g = torch.Generator().manual_seed(0)
    stripes = (torch.arange(32) % 4 < 2).float().view(1, 1, 1, 32).expand(20, 3, 32, 32).clone()
    stripes = stripes * 0.5 + 0.05 * torch.rand(20, 3, 32, 32, generator=g)
    stripes = torch.stack([torch.roll(s, shifts=int(i % 4), dims=-1) for i, s in enumerate(stripes)])
    masker = PatchStatsMasker(PatchStatsConfig(patch_size=8, pooled_size=4)).fit(stripes)
    assert masker.mode == "pooled"
    shifted = torch.roll(stripes[:1], shifts=1, dims=-1)
    assert not bool(masker.mask(shifted).any())


def test_save_load_round_trip_and_unfitted_error(tmp_path):
    masker = PatchStatsMasker().fit(_aligned_objects(10))
    path = masker.save(tmp_path / "ps.pt")
    again = PatchStatsMasker().load(path)
    x = _aligned_objects(3, seed=9)
    assert torch.equal(masker.score_map(x), again.score_map(x)) and again.threshold == masker.threshold
    with pytest.raises(RuntimeError, match="not fitted"):
        PatchStatsMasker().score_map(x)
