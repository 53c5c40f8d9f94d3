"""Config and feature sets: declared as data, validated with messages a user can act on."""

from __future__ import annotations

import pytest

from galpipe import config as config_module
from galpipe.features import FeatureSet, parse_feature_sets


def test_bundled_configs_load_and_derive_models():
    sample = config_module.load()
    names = [m.name for m in sample.models()]
    assert "scl:gri" in names and "mi:optical+gri" in names
    assert len(names) == len(set(names))
    paper = config_module.load(config_module.CONFIG_DIR / "paper.yaml")
    assert {"Mugriz", "MW123", "Iugriz", "Ioptnorm", "Morph", "Zspec"} <= set(paper.feature_sets)
    assert len(paper.feature_sets["Morph"].columns) == 20
    assert paper.feature_sets["Ioptnorm"].flux_normalise
    # 5 tuples + 5 single-band + 4 adjacent-pair + 8 single-magnitude + 7 adjacent-magnitude
    assert len(paper.information.tuples) == 5 + 5 + 4 + 8 + 7


def test_union_merges_in_order_and_keeps_extra_once():
    sets = parse_feature_sets({
        "M": {"columns": ["mag_u", "mag_g"], "errors": ["err_u", "err_g"], "extra": ["ebv"]},
        "I": {"bands": ["u", "g"], "extra": ["ebv"]},
        "I+M": {"union": ["I", "M"]},
    })
    union = sets["I+M"]
    assert union.input_kind == "image"
    assert union.bands == ("u", "g")
    assert union.catalogue_inputs == ("mag_u", "mag_g", "err_u", "err_g", "ebv")


def test_union_cycle_and_unknown_set_are_named():
    with pytest.raises(ValueError, match="cycle: A -> B -> A"):
        parse_feature_sets({"A": {"union": ["B"]}, "B": {"union": ["A"]}})
    with pytest.raises(ValueError, match="unknown feature set 'C'"):
        parse_feature_sets({"A": {"union": ["C"]}})


def test_unknown_columns_and_bands_fail_clearly():
    fs = FeatureSet("X", bands=("g", "y"), columns=("mag_g", "mag_q"))
    with pytest.raises(ValueError, match=r"columns \['mag_q'\].*bands \['y'\]"):
        fs.check_available(["mag_g", "ebv"], ["g", "r", "i"])


def test_unknown_config_keys_are_rejected_with_the_section():
    with pytest.raises(ValueError, match="section 'training': unknown keys \\['stepz'\\]"):
        config_module.load(overrides={"training": {"stepz": 3}})
    with pytest.raises(ValueError, match="unknown feature set 'nope'"):
        config_module.load(overrides={"imodels": ["nope"]})


def test_overrides_apply_per_kind_and_change_the_hash():
    base = config_module.load()
    changed = config_module.load(overrides={"training": {"overrides": {"mi:gri": {"steps": 7}}}})
    assert changed.config_hash != base.config_hash
    assert changed.training.for_model("image", "mi", "mi:gri").steps == 7
    assert changed.training.for_model("image", "mi", "mi:optical+gri").steps == \
        base.training.for_model("image", "mi", "mi:optical+gri").steps
    assert changed.training.for_model("catalogue", "scl", "scl:optical").batch_size == 128
