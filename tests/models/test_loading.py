"""Loading a pre-training checkpoint as what users load it as: an encoder (AutoModel) or a new classifier."""

import pytest
from transformers import AutoModel, AutoModelForAudioClassification, AutoModelForPreTraining
from transformers.utils import logging as hf_logging

import hf_audiorep


@pytest.mark.parametrize("preset", ["audiomae-tiny", "cat-small"])
def test_a_pre_training_checkpoint_loads_without_an_unexpected_keys_report(preset, tmp_path, caplog):
    """Its decoder (and CAT's RR projector) are dropped by design: no "UNEXPECTED decoder.*" report on
    every load. Keys a model really lacks are still reported."""
    AutoModelForPreTraining.from_config(hf_audiorep.config_from_preset(preset)).save_pretrained(tmp_path)
    hf_logging.enable_propagation()  # transformers' load report reaches caplog
    try:
        with caplog.at_level("WARNING"):
            AutoModel.from_pretrained(tmp_path)
            AutoModelForAudioClassification.from_pretrained(tmp_path, num_labels=3)
    finally:
        hf_logging.disable_propagation()
    report = caplog.text
    assert "UNEXPECTED" not in report, report
    assert "classifier.weight" in report and "MISSING" in report  # the new head is still announced
