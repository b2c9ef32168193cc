"""The Space with a UTS checkpoint that has a caption decoder (multi-task: MTC head + decoder): the tags and,
beside them, the generated caption of the upload; a tagger without a decoder shows no caption line."""

import numpy as np
import pytest
from tagger_utils import save_tiny_tagger, write_clip
from test_space import load_app
from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

from hf_audiorep.data.decode import decode_audio
from hf_audiorep.data.text_tokenizers import train_bpe_tokenizer
from hf_audiorep.evaluation.captioning import caption_waveforms
from hf_audiorep.modeling import (
    ZipformerConfig,
    ZipformerFbankFeatureExtractor,
    ZipformerForConditionalGeneration,
    ZipformerProcessor,
    caption_decoder_config,
)

TAGS = ["dog", "rain", "engine", "speech", "music"]
CAPTIONS = ["a dog barks in the rain", "an engine idles", "a man speaks over music", "rain falls"] * 4
#: the encoder's limit, in 10-ms frames (the default: 30 s): a longer upload is captioned in part
MAX_FRAMES = 3000


@pytest.fixture(scope="module")
def captioner_dir(tmp_path_factory):
    tokenizer = train_bpe_tokenizer(CAPTIONS, vocab_size=300)
    # untied: a random tied decoder only repeats its start token, which would caption nothing
    decoder = caption_decoder_config(tokenizer, tie_word_embeddings=False)
    config = ZipformerConfig.from_preset(
        "zipformer-small",
        decoder_config=decoder,
        tagging_head=True,
        max_length=MAX_FRAMES,
        num_labels=len(TAGS),
        id2label=dict(enumerate(TAGS)),
        label2id={t: i for i, t in enumerate(TAGS)},
        problem_type="multi_label_classification",
    )
    path = tmp_path_factory.mktemp("space-caption") / "uts-multitask"
    ZipformerForConditionalGeneration(config).save_pretrained(path)
    ZipformerProcessor(
        feature_extractor=ZipformerFbankFeatureExtractor(), tokenizer=tokenizer
    ).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def app():
    return load_app()


def test_a_model_with_a_decoder_shows_its_caption_beside_the_tags(app, captioner_dir, tmp_path):
    settings = app.TaggerSettings(model_ids=(str(captioner_dir),), max_seconds=5.0, max_megabytes=1.0)
    clip = write_clip(tmp_path / "clip.wav", 1.5)
    labels, _, message = app.predict(str(clip), None, 3, settings=settings)
    assert set(labels) <= set(TAGS) and len(labels) == 3  # the multi-task checkpoint's MTC head tags
    model = AutoModelForSpeechSeq2Seq.from_pretrained(captioner_dir).eval()
    processor = AutoProcessor.from_pretrained(captioner_dir)
    expected = caption_waveforms(
        model, processor, [decode_audio(str(clip), 16000)], max_new_tokens=app.CAPTION_TOKENS
    )[0]
    assert expected  # an untied random decoder says something
    assert message.startswith(f"**Caption:** {expected}\n\n") and "Tagged 1.5 s" in message
    assert "first" not in message  # the whole clip was captioned


def test_a_clip_longer_than_the_encoder_takes_is_captioned_from_its_start(app, captioner_dir, tmp_path):
    settings = app.TaggerSettings(model_ids=(str(captioner_dir),), max_seconds=40.0, max_megabytes=5.0)
    clip = write_clip(tmp_path / "long.wav", 32.0)
    labels, _, message = app.predict(str(clip), None, 2, settings=settings)
    assert labels and message.startswith("**Caption:** ")
    assert "The caption describes the first 30.0 s" in message
    model = AutoModelForSpeechSeq2Seq.from_pretrained(captioner_dir).eval()
    head = decode_audio(str(clip), 16000)[: 30 * 16000]
    expected = caption_waveforms(
        model, AutoProcessor.from_pretrained(captioner_dir), [head], max_new_tokens=60
    )
    assert f"**Caption:** {expected[0]}\n" in message


def test_a_tagger_without_a_decoder_shows_no_caption(app, tmp_path):
    tagger = save_tiny_tagger(tmp_path / "tagger")
    settings = app.TaggerSettings(model_ids=(str(tagger),), max_seconds=5.0, max_megabytes=1.0)
    labels, _, message = app.predict(str(write_clip(tmp_path / "c.wav", 1.5)), None, 3, settings=settings)
    assert labels and "Caption" not in message
    assert app.load_captioner(str(tagger)) is None
    assert np.isfinite(list(labels.values())).all()
