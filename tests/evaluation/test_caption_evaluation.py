"""Captioning a dataset split with a tiny captioner: one caption per clip, in order, equal to calling
``generate`` / ``parallel_generate`` on the processor's features directly; clips read (and resampled) by the
library's decoder; a bad clip named; and the scores of those captions against the split's references."""

import numpy as np
import pytest
import torch
from datasets import Audio, Dataset
from tagger_utils import write_clip

from hf_audiorep.data.decode import decode_audio
from hf_audiorep.data.embedded.corpus import load_embedded_corpus
from hf_audiorep.data.text_tokenizers import train_bpe_tokenizer
from hf_audiorep.evaluation.captioning import caption_metrics, evaluate_captioning, generate_captions
from hf_audiorep.modeling import ZipformerFbankFeatureExtractor, caption_decoder_config
from hf_audiorep.modeling.configuration_zipformer import ZipformerConfig
from hf_audiorep.modeling.modeling_zipformer_caption import ZipformerForConditionalGeneration
from hf_audiorep.modeling.processing_zipformer import ZipformerProcessor

#: short captions: the tiny decoder's random output is cut here, which keeps the tests fast
MAX_NEW_TOKENS = 6


@pytest.fixture(scope="module")
def clips():
    """Five 2-s clips of the embedded corpus, with their captions."""
    corpus = load_embedded_corpus(
        seed=0, num_train=0, num_validation=0, num_test=8, num_heldout=0, clip_seconds=2.0
    )
    return corpus["test"].select(range(5))


@pytest.fixture(scope="module")
def captioner(clips):
    """A random-weight zipformer-small captioner and its processor. The LM head is untied from the token
    embedding: a tied random decoder only repeats its input token (an empty caption), an untied one writes
    tokens that depend on the audio."""
    tokenizer = train_bpe_tokenizer(clips["caption"], 300)
    decoder = caption_decoder_config(tokenizer, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = ZipformerForConditionalGeneration(
        ZipformerConfig.from_preset("zipformer-small", decoder_config=decoder)
    ).eval()
    return model, ZipformerProcessor(ZipformerFbankFeatureExtractor(), tokenizer)


def direct(model, processor, waveforms, parallel=False):
    """The captions of one call on the processor's features: what generate_captions must reproduce."""
    inputs = processor(audio=waveforms, sampling_rate=16000, return_tensors="pt")
    if parallel:
        ids = model.parallel_generate(inputs["input_values"], inputs["attention_mask"], MAX_NEW_TOKENS)
    else:
        ids = model.generate(
            input_values=inputs["input_values"],
            attention_mask=inputs["attention_mask"],
            max_new_tokens=MAX_NEW_TOKENS,
        )
    return [text.strip() for text in processor.batch_decode(ids, skip_special_tokens=True)]


class RecordingProcessor:
    """The captioner's processor, keeping every waveform it is given: what the model heard."""

    def __init__(self, processor):
        self.processor, self.feature_extractor, self.heard = processor, processor.feature_extractor, []

    def __call__(self, audio, **kwargs):
        self.heard.extend(audio)
        return self.processor(audio=audio, **kwargs)

    def batch_decode(self, *args, **kwargs):
        return self.processor.batch_decode(*args, **kwargs)


def assert_heard(recording, waveforms):
    assert len(recording.heard) == len(waveforms)
    for heard, expected in zip(recording.heard, waveforms, strict=True):
        np.testing.assert_array_equal(heard, expected)


def waveforms_of(dataset, seconds=None):
    audio = dataset.cast_column("audio", Audio(decode=False))["audio"]
    return [
        decode_audio(value, 16000)[: None if seconds is None else round(seconds * 16000)] for value in audio
    ]


@pytest.mark.parametrize("parallel", [False, True], ids=["ar", "par"])
def test_one_caption_per_clip_as_generate_gives_them(captioner, clips, parallel):
    model, processor = captioner
    expected = direct(model, processor, waveforms_of(clips), parallel)
    # Batches of 2: the last batch holds one clip, and the order must survive the batching.
    captions = generate_captions(
        model,
        processor,
        clips,
        batch_size=2,
        parallel=parallel,
        max_new_tokens=MAX_NEW_TOKENS,
        progress=False,
    )
    assert captions == expected
    assert len(captions) == len(clips) and any(captions)


def test_autoregressive_and_parallel_decoding_differ(captioner, clips):
    model, processor = captioner
    ar = generate_captions(model, processor, clips, max_new_tokens=MAX_NEW_TOKENS, progress=False)
    par = generate_captions(
        model, processor, clips, parallel=True, max_new_tokens=MAX_NEW_TOKENS, progress=False
    )
    assert ar != par


def test_clip_seconds_captions_the_head_of_each_clip(captioner, clips):
    model, processor = captioner
    heads = waveforms_of(clips, seconds=0.5)
    recording = RecordingProcessor(processor)
    captions = generate_captions(
        model, recording, clips, clip_seconds=0.5, max_new_tokens=MAX_NEW_TOKENS, progress=False
    )
    # The random captioner barely listens, so its captions cannot tell a head from a clip: its input can.
    assert_heard(recording, heads)
    assert captions == direct(model, processor, heads)


def test_files_at_another_rate_are_resampled_by_the_librarys_decoder(captioner, tmp_path):
    model, processor = captioner
    paths = [
        str(write_clip(tmp_path / f"{i}.wav", 1.0 + 0.5 * i, sample_rate=8000, seed=i)) for i in range(3)
    ]
    dataset = Dataset.from_dict({"audio": paths}).cast_column("audio", Audio())
    waveforms = [decode_audio(path, 16000) for path in paths]
    recording = RecordingProcessor(processor)
    captions = generate_captions(
        model, recording, dataset, batch_size=3, max_new_tokens=MAX_NEW_TOKENS, progress=False
    )
    assert_heard(recording, waveforms)
    assert captions == direct(model, processor, waveforms)


def test_a_bad_clip_is_named(captioner, tmp_path):
    model, processor = captioner
    good = write_clip(tmp_path / "good.wav", 1.0)
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio at all, just text\n" * 20)
    short = write_clip(tmp_path / "short.wav", 0.05)
    for paths, message in [([good, bad], r"clip 1 \(.*notes\.wav\)"), ([short], "too short to caption")]:
        dataset = Dataset.from_dict({"audio": [str(p) for p in paths]}).cast_column("audio", Audio())
        with pytest.raises(ValueError, match=message):
            generate_captions(model, processor, dataset, max_new_tokens=MAX_NEW_TOKENS, progress=False)


def test_the_model_gets_its_training_mode_back(captioner, clips):
    model, processor = captioner
    model.train()
    try:
        generate_captions(
            model, processor, clips.select(range(1)), max_new_tokens=MAX_NEW_TOKENS, progress=False
        )
        assert model.training
    finally:
        model.eval()


def test_a_tagger_is_refused(tagger_dir, captioner, clips):
    from transformers import AutoModelForAudioClassification

    _, processor = captioner
    tagger = AutoModelForAudioClassification.from_pretrained(tagger_dir)
    for parallel, message in [(False, "cannot generate text"), (True, "no parallel_generate")]:
        with pytest.raises(TypeError, match=message):
            generate_captions(tagger, processor, clips, parallel=parallel, progress=False)


def test_evaluate_captioning_scores_the_captions_against_the_caption_column(captioner, clips):
    model, processor = captioner
    predictions = direct(model, processor, waveforms_of(clips))
    # Two references for the first clip: a list column holds several per clip.
    references = [[caption] for caption in clips["caption"]]
    references[0].append("a second reference caption")
    dataset = clips.remove_columns("caption").add_column("caption", references)
    metrics, examples = evaluate_captioning(
        model, processor, dataset, max_new_tokens=MAX_NEW_TOKENS, batch_size=2, num_examples=3, progress=False
    )
    assert metrics == caption_metrics(predictions, references)
    assert examples == list(zip(references, predictions, strict=True))[:3]
    with pytest.raises(ValueError, match="caption_column 'text' not in the dataset columns"):
        evaluate_captioning(model, processor, clips, caption_column="text", progress=False)


def test_perfect_captions_score_the_maximum():
    # A caption equal to its reference gets BLEU 1 and CIDEr-D 10, or 10 * 3/4 without a 4-gram.
    references = [
        "a dog barks twice in a quiet yard",
        "rain falls steadily on a metal roof",
        "an engine idles",
    ]
    metrics = caption_metrics(references, references)
    for n in range(1, 5):
        assert metrics[f"bleu_{n}"] == pytest.approx(1.0, abs=1e-8)
    assert metrics["cider"] == pytest.approx(10 * np.mean([1.0, 1.0, 3 / 4]), rel=1e-9)
