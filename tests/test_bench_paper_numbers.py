"""The paper's numbers as transcribed: stated averages match their columns, tables agree."""
import statistics

import pytest

from fader_kit_bench import paper_numbers as P

# The paper prints three decimals: each value is off by up to 0.0005, so is their mean, and the
# printed average is rounded once more -- a column is consistent within 0.001.
TOL = 0.001 + 1e-9


def _single_columns():
    for table, data, order in (("table1", P.TABLE1, P.MVTEC_ORDER), ("table3", P.TABLE3, P.MVTEC_ORDER),
                               ("table5", P.TABLE5, P.VISA_ORDER)):
        for col, values in data.items():
            yield table, col, "image", [values[c] for c in order], values["average"]


def _pair_columns():
    for table, data in (("table2", P.TABLE2), ("table4", P.TABLE4)):
        for col, values in data.items():
            for f in P.BeforeAfter._fields:
                yield table, col, f, [getattr(values[c], f) for c in P.MVTEC_ORDER], getattr(values["average"], f)


@pytest.mark.parametrize("table, col, field, values, stated", [*_single_columns(), *_pair_columns()],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_stated_average_matches_the_column(table, col, field, values, stated):
    mean = statistics.fmean(values)
    known = P.KNOWN_AVERAGE_MISMATCHES.get((table, col, field))
    if known is None:
        assert abs(mean - stated) <= TOL, f"{table} {col} {field}: mean {mean:.4f} vs printed {stated}"
    else:  # a mismatch of the paper itself: kept as printed, and it must really be one
        printed, paper_mean = known
        assert stated == printed and abs(mean - paper_mean) < 1e-4 and abs(mean - stated) > TOL


def test_every_table_has_every_category_once():
    for data in (P.TABLE1, P.TABLE2, P.TABLE3, P.TABLE4):
        for values in data.values():
            assert list(values) == [*P.MVTEC_ORDER, "average"]
    for values in P.TABLE5.values():
        assert list(values) == [*P.VISA_ORDER, "average"]


def test_spot_values_against_the_paper_text():
    assert P.TABLE2["dino_vit"]["pill"] == P.BeforeAfter(0.922, 0.875, 0.933, 0.925)
    assert P.TABLE2["winclip"]["cable"] == P.BeforeAfter(0.838, 0.550, 0.794, 0.612)
    assert P.TABLE4["ami_net"]["metal_nut"] == P.BeforeAfter(0.918, 0.545, 0.933, 0.835)
    assert P.TABLE3["hard"]["screw"] == 0.605
    assert P.TABLE5["fader"]["pcb4"] == 0.999 and P.TABLE5["jnld"]["average"] == 0.930
    assert P.TABLE1["memae"]["screw"] == 0.257


def test_tables_1_and_3_agree_on_ear_and_fader():
    # Table 1's EAR and FADeR_EAR columns are Table 3's first and last: a cross-check of both.
    assert P.TABLE1["ear"] == P.TABLE3["ear"]
    assert P.TABLE1["fader"] == P.TABLE3["ours"]


def test_category_titles():
    assert P.category_title("metal_nut") == "Metal nut"
    assert P.category_title("pipe_fryum") == "Pipe fryum"
    assert P.category_title("pcb3") == "PCB3"
    assert P.category_title("bottle") == "Bottle"
