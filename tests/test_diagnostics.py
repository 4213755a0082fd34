"""Head and mask diagnostics on hand-built cases."""
import pytest
import torch

from fader_kit.model.diagnostics import Diagnostics, found_missed_defects, head_diagnostics, mask_diagnostics, summary_line


def _case():
    """Two 8x8 images, patches m=4 (2x2 grid): image 0 normal, image 1 with a defect filling its
    top-left patch, the binary mask covering the left half of that defect."""
    gt = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    gt[1, 0, 0:4, 0:4] = True
    mb = torch.zeros_like(gt)
    mb[1, 0, 0:4, 0:2] = True
    labels = torch.tensor([0, 1])
    return gt, mb, labels


def test_mask_diagnostics_hand_values():
    gt, mb, labels = _case()
    d = mask_diagnostics(mb, gt, labels)
    assert d.defect_pixels_masked == pytest.approx(0.5)
    assert d.defective_images_unmasked == 0.0
    assert d.normal_pixels_masked == 0.0
    d0 = mask_diagnostics(torch.zeros_like(mb), gt, labels)
    assert d0.defect_pixels_masked == 0.0 and d0.defective_images_unmasked == 1.0


def test_head_diagnostics_gates_and_auroc():
    gt, mb, labels = _case()
    # gates: closed (0) on the defect patch, 0.5 on the other patches of the defective image, 1 on the normal one
    grid = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]], [[[0.0, 0.5], [0.5, 0.5]]]])
    pred = torch.tensor([[0.1, 0.2, 0.1, 0.3], [0.9, 0.2, 0.4, 0.1]])
    d = head_diagnostics(pred, grid, mb, gt, labels, m=4)
    assert d.gate_unmasked_defect == 0.0
    assert d.gate_normal_defective == pytest.approx(0.5)
    assert d.gate_normal_images == 1.0
    assert d.closed_normal_images == 0.0
    assert d.unmasked_defect_patches == 1  # half the top-left patch is unmasked defect (>= 25 %)
    assert d.auroc_unmasked_defect == 1.0  # 0.9 above all seven normal patches
    assert d.found_missed_defects is True
    # a head that ranks the defect patch below every normal patch: AUROC 0, not found
    flipped = head_diagnostics(-pred, grid, mb, gt, labels, m=4)
    assert flipped.auroc_unmasked_defect == 0.0 and flipped.found_missed_defects is False
    assert "did NOT find" in summary_line(Diagnostics(mask=mask_diagnostics(mb, gt, labels), head=flipped))


def test_fully_masked_defects_leave_nothing_to_find():
    gt, _, labels = _case()
    d = head_diagnostics(torch.rand(2, 4), torch.ones(2, 1, 2, 2), gt.clone(), gt, labels, m=4)
    assert d.gate_unmasked_defect is None and d.auroc_unmasked_defect is None
    assert found_missed_defects(d) is None
