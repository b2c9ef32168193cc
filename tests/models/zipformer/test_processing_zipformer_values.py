"""The captioner's processor (hf_audiorep/modeling/processing_zipformer.py) against its two components called
directly: audio goes to the Zipformer fbank front end (with the rate, the tensor type and any extra keyword),
text alone to the tokenizer (special tokens included), and audio with text adds ``labels``: each caption's
tokens without special tokens, then ``</s>``, a batch tensor padded with -100. test_caption_model.py checks
the AutoProcessor round trip; this file checks each routing and each edge of the labels."""

import numpy as np
import pytest
import torch

from hf_audiorep.data.text_tokenizers import train_bpe_tokenizer
from hf_audiorep.modeling import ZipformerFbankFeatureExtractor
from hf_audiorep.modeling.processing_zipformer import ZipformerProcessor

CAPTIONS = ["a dog barks twice in a quiet yard", "rain falls steadily on a metal roof"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(CAPTIONS, vocab_size=300)


@pytest.fixture(scope="module")
def processor(tokenizer):
    return ZipformerProcessor(ZipformerFbankFeatureExtractor(), tokenizer)


def audio(*lengths: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]


def plain(tokenizer, text: str) -> list[int]:
    """The caption target written out: the tokens without <s> / </s>, then the </s> id."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def test_components_are_the_ones_given(processor, tokenizer):
    assert isinstance(processor.feature_extractor, ZipformerFbankFeatureExtractor)
    assert processor.tokenizer is tokenizer


def test_audio_alone_is_the_feature_extractors_output(processor):
    clips = audio(16000, 8000)
    ours = processor(audio=clips, sampling_rate=16000, return_tensors="pt")
    theirs = ZipformerFbankFeatureExtractor()(clips, sampling_rate=16000, return_tensors="pt")
    assert set(ours) == {"input_values", "attention_mask"}
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0)
    assert ours["attention_mask"].sum(-1).tolist() == [(16000 + 80) // 160, (8000 + 80) // 160]


def test_audio_arguments_reach_the_feature_extractor(processor):
    clip = audio(4000)[0]
    as_numpy = processor(audio=clip, sampling_rate=16000, return_tensors="np")
    assert isinstance(as_numpy["input_values"], np.ndarray) and as_numpy["input_values"].shape == (1, 25, 80)
    as_lists = processor(audio=clip, sampling_rate=16000)
    assert isinstance(as_lists["input_values"], list)
    no_mask = processor(audio=clip, sampling_rate=16000, return_tensors="pt", return_attention_mask=False)
    assert set(no_mask) == {"input_values"}
    with pytest.raises(ValueError, match="expects 16000 Hz"):
        processor(audio=clip, sampling_rate=8000)
    with pytest.raises(ValueError, match="expects 16000 Hz"):
        processor(audio=clip, text="a dog", sampling_rate=8000, return_tensors="pt")


def test_text_alone_is_the_tokenizers_output(processor, tokenizer):
    assert processor(text="rain falls")["input_ids"] == tokenizer("rain falls")["input_ids"]
    assert processor(text="rain falls")["input_ids"][0] == tokenizer.bos_token_id  # special tokens kept
    ours = processor(text=["rain", "a dog barks"], padding=True, return_tensors="pt")
    theirs = tokenizer(["rain", "a dog barks"], padding=True, return_tensors="pt")
    assert set(ours) == set(theirs) and isinstance(ours["input_ids"], torch.Tensor)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key])
    assert (ours["input_ids"][0] == tokenizer.pad_token_id).any()  # padding=True reached the tokenizer


def test_neither_audio_nor_text_is_an_error(processor):
    with pytest.raises(ValueError, match="^ZipformerProcessor needs audio, text or both$"):
        processor(sampling_rate=16000)


def test_audio_and_text_add_the_caption_labels(processor, tokenizer):
    clips = audio(6000, 9000)
    texts = ["a dog barks twice", "rain"]
    inputs = processor(audio=clips, text=texts, sampling_rate=16000, return_tensors="pt")
    features = ZipformerFbankFeatureExtractor()(clips, sampling_rate=16000, return_tensors="pt")
    assert set(inputs) == {"input_values", "attention_mask", "labels"}
    torch.testing.assert_close(inputs["input_values"], features["input_values"], rtol=0, atol=0)
    long, short = plain(tokenizer, texts[0]), plain(tokenizer, texts[1])
    assert len(long) > len(short) + 1
    assert inputs["labels"].dtype == torch.int64
    assert inputs["labels"].tolist() == [long, short + [-100] * (len(long) - len(short))]
    # One clip and one caption, no tensors: the labels are a plain list.
    single = processor(audio=clips[0], text=texts[1], sampling_rate=16000)
    assert single["labels"] == short


def test_caption_labels_of_strings_lists_and_tuples(processor, tokenizer):
    first, second = plain(tokenizer, CAPTIONS[0]), plain(tokenizer, "a roof")
    assert first[-1] == tokenizer.eos_token_id and tokenizer.bos_token_id not in first
    assert processor.caption_labels(CAPTIONS[0]) == first
    assert processor.caption_labels([CAPTIONS[0], "a roof"]) == [first, second]
    assert processor.caption_labels((CAPTIONS[0], "a roof")) == [first, second]
    assert processor.caption_labels(iter([CAPTIONS[0], "a roof"])) == [first, second]  # any iterable
    assert processor.caption_labels(["a roof"]) == [second]  # a list of one stays a batch
    one = processor.caption_labels(CAPTIONS[0], return_tensors="pt")
    assert one.dtype == torch.int64 and one.tolist() == [first]
    batch = processor.caption_labels(["a roof", CAPTIONS[0]], return_tensors="pt")
    assert batch.tolist() == [second + [-100] * (len(first) - len(second)), first]


def test_caption_labels_refuse_other_tensor_types_and_a_tokenizer_without_eos(processor, tokenizer):
    with pytest.raises(
        ValueError, match="^ZipformerProcessor returns labels as PyTorch tensors only, not 'np'$"
    ):
        processor.caption_labels("a dog", return_tensors="np")
    with pytest.raises(ValueError, match="PyTorch tensors only"):
        processor(audio=audio(4000), text="a dog", sampling_rate=16000, return_tensors="np")
    no_eos = train_bpe_tokenizer(CAPTIONS, vocab_size=300)
    no_eos.eos_token = None
    assert no_eos.eos_token_id is None
    with pytest.raises(ValueError, match="^the tokenizer has no eos_token: a caption target ends with one$"):
        ZipformerProcessor(ZipformerFbankFeatureExtractor(), no_eos).caption_labels("a dog")


def test_decoding_is_the_tokenizers(processor, tokenizer):
    ids = tokenizer(["rain falls", "a dog"], padding=True)["input_ids"]
    assert processor.batch_decode(ids) == tokenizer.batch_decode(ids)
    assert processor.batch_decode(ids, skip_special_tokens=True) == ["rain falls", "a dog"]
    assert processor.decode(ids[0]) == tokenizer.decode(ids[0]) != "rain falls"  # <s> and </s> shown
    assert processor.decode(ids[0], skip_special_tokens=True) == "rain falls"


def test_a_folder_without_a_tokenizer_is_named_as_such(processor, tmp_path):
    from transformers import AutoProcessor

    import hf_audiorep  # noqa: F401  (registers the Auto classes)
    from hf_audiorep.registry import config_from_preset

    # A Zipformer tagger keeps a feature extractor only; AutoProcessor once asked for sentencepiece.
    tagger = tmp_path / "tagger"
    config_from_preset("zipformer-small", num_labels=3).save_pretrained(tagger)
    processor.feature_extractor.save_pretrained(tagger)
    with pytest.raises(
        ValueError, match=r"has no tokenizer, so no ZipformerProcessor: .*AutoFeatureExtractor"
    ):
        AutoProcessor.from_pretrained(tagger)
    captioner = tmp_path / "captioner"
    processor.save_pretrained(captioner)
    loaded = ZipformerProcessor.from_pretrained(captioner)
    assert loaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
