"""``freeze_feature_encoder()``, which transformers' audio-classification example calls on the model by
default (``--freeze_feature_encoder True``): every family has it, it freezes what sits below the first
block, and the example's call sequence then trains the rest."""

import torch
from test_hf_trainer import (  # noqa: F401  (audio_folder: the module fixture, shared)
    FAMILIES,
    audio_folder,
    run_example_sequence,
    save_pretrained_encoder,
    tiny_config,
)
from transformers import AutoModelForAudioClassification

#: what each family puts below its first block, written out: the patch projection or convolutional stem, the
#: CLS token, positional parameters and the norm or projection between the stem and the blocks
BELOW_THE_BLOCKS = {
    "audiomae": ("patch_embed.", "cls_token", "pos_embed"),
    "cat": ("stem.", "patch_embed.", "cls_token", "pre_norm."),
    "bat": ("patch_embed.", "cls_token"),
    "beats": (
        "patch_embedding.",
        "layer_norm.",
        "post_extract_proj.",
        "encoder.pos_conv.",
        "encoder.layer_norm.",
        "encoder.relative_attention_bias.",
    ),
    "zipformer": ("embed.",),
    "cp_mobile": ("stem.",),
}


@FAMILIES
def test_freeze_feature_encoder_freezes_the_stem_only(architecture):
    model = AutoModelForAudioClassification.from_config(tiny_config(architecture, num_labels=3))
    prefix = model.base_model_prefix + "."
    expected = {
        name
        for name, _ in model.named_parameters()
        if name.startswith(prefix)
        and name.removeprefix(prefix).startswith(BELOW_THE_BLOCKS[architecture.name])
    }
    assert expected, f"no {architecture.name} parameter below the blocks"
    model.freeze_feature_encoder()
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == expected


@FAMILIES
def test_the_example_default_freezes_the_stem_and_trains_the_rest(
    architecture,
    audio_folder,  # noqa: F811  (the fixture imported above)
    tmp_path,
    monkeypatch,
):
    encoder_dir = save_pretrained_encoder(architecture, tmp_path / "encoder")
    torch.manual_seed(0)
    start = {
        name: p.detach().clone()
        for name, p in AutoModelForAudioClassification.from_pretrained(encoder_dir).named_parameters()
    }
    monkeypatch.chdir(audio_folder)
    *_, model = run_example_sequence(
        encoder_dir, audio_folder / "data", tmp_path / "run", False, freeze_feature_encoder=True
    )
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param.detach(), start[name]), f"{name} is frozen but changed"
    changed = {
        name
        for name, p in model.named_parameters()
        if name in start and not name.startswith("classifier") and not torch.equal(p.detach(), start[name])
    }
    assert changed, "nothing above the stem trained"
