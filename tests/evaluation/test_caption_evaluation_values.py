"""What `generate_captions` and `evaluate_captioning` hand the captioner and what they return, checked with a
stand-in captioner whose caption names the clip it heard (its length in samples): one caption per clip in the
dataset's order across batches, the head cut at ``clip_seconds``, the length limit and the decoder passed on,
the inputs on the model's dtype, the checks of the arguments, the clip a bad one is named by, and the scores
and examples of `evaluate_captioning` for a hand case."""

import numpy as np
import pytest
import torch
from datasets import Audio, Dataset, IterableDataset

from hf_audiorep.data.decode import CorruptAudioError
from hf_audiorep.evaluation.captioning import (
    caption_metrics,
    caption_waveforms,
    check_captionable,
    evaluate_captioning,
    generate_captions,
)

SR = 16000
DIGIT = 3  # the id of the digit 0 (after <s>, <pad> and </s>)
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


class FeatureExtractor:
    sampling_rate = SR


class Processor:
    """Pads the waveforms into ``input_values`` (float32) with an ``attention_mask``; decodes the special ids
    0 (``<s>``) and 2 (``</s>``) as themselves unless skipped, and id ``DIGIT + d`` as the word for ``d``."""

    def __init__(self, mask: bool = True):
        self.feature_extractor, self.mask, self.calls = FeatureExtractor(), mask, []

    def __call__(self, audio, sampling_rate, return_tensors):
        assert return_tensors == "pt"
        self.calls.append((len(audio), sampling_rate))
        longest = max(len(wave) for wave in audio)
        values = torch.zeros(len(audio), longest)
        mask = torch.zeros(len(audio), longest, dtype=torch.long)
        for row, wave in enumerate(audio):
            values[row, : len(wave)] = torch.from_numpy(np.asarray(wave))
            mask[row, : len(wave)] = 1
        return {"input_values": values, **({"attention_mask": mask} if self.mask else {})}

    def batch_decode(self, ids, skip_special_tokens=False):
        special = {0: "<s>", 2: "</s>"}
        return [
            " "
            + " ".join(
                special[i] if i in special else WORDS[i - DIGIT]
                for i in row.tolist()
                if not (skip_special_tokens and i in special)
            )
            + " "
            for row in ids
        ]


class Captioner(torch.nn.Module):
    """Captions a clip ``<s> <digits of its length in samples> </s>`` (autoregressive) or the digits of its
    length reversed (parallel), and records what it was given."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1, dtype=dtype))
        self.calls = []

    def can_generate(self):
        return True

    def _ids(self, input_values, attention_mask, reverse):
        lengths = (
            attention_mask.sum(1)
            if attention_mask is not None
            else [input_values.shape[1]] * len(input_values)
        )
        rows = []
        for n in lengths:
            digits = [DIGIT + int(d) for d in str(int(n))]
            rows.append([0, *(digits[::-1] if reverse else digits), 2])
        width = max(len(r) for r in rows)
        return torch.tensor([r + [2] * (width - len(r)) for r in rows])

    def generate(self, input_values, attention_mask=None, **kwargs):
        self.calls.append(("generate", input_values.dtype, attention_mask is None, kwargs, self.training))
        return self._ids(input_values, attention_mask, reverse=False)

    def parallel_generate(self, input_values, attention_mask, max_new_tokens):
        self.calls.append(
            ("parallel", input_values.dtype, attention_mask is None, max_new_tokens, self.training)
        )
        return self._ids(input_values, attention_mask, reverse=True)


def spoken(n: int, reverse: bool = False) -> str:
    digits = [WORDS[int(d)] for d in str(n)]
    return " ".join(digits[::-1] if reverse else digits)


LENGTHS = [1600, 2400, 3201, 4000, 4803]  # 0.1 s and more, every one different


def records(lengths) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"array": 0.1 * rng.standard_normal(n).astype(np.float32), "sampling_rate": SR} for n in lengths]


def clips(lengths=LENGTHS, captions=None) -> Dataset:
    columns = {"audio": records(lengths)}
    if captions is not None:
        columns["caption"] = captions
    return Dataset.from_dict(columns).cast_column("audio", Audio(sampling_rate=SR))


# ---- generate_captions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 2, 16])
def test_one_caption_per_clip_in_the_datasets_order_whatever_the_batches(batch_size):
    model, processor = Captioner(), Processor()
    captions = generate_captions(model, processor, clips(), batch_size=batch_size, progress=False)
    assert captions == [spoken(n) for n in LENGTHS]
    assert [size for size, _ in processor.calls] == [
        min(batch_size, len(LENGTHS) - start) for start in range(0, len(LENGTHS), batch_size)
    ]
    assert all(rate == SR for _, rate in processor.calls)


def test_the_default_batch_is_sixteen_clips():
    model, processor = Captioner(), Processor()
    generate_captions(model, processor, clips([1600] * 17), progress=False)
    assert [size for size, _ in processor.calls] == [16, 1]


def test_an_iterable_dataset_is_captioned_too():
    model, processor = Captioner(), Processor()
    stream = clips().to_iterable_dataset()
    assert isinstance(stream, IterableDataset)
    assert generate_captions(model, processor, stream, batch_size=2, progress=False) == [
        spoken(n) for n in LENGTHS
    ]


def test_parallel_decoding_and_the_length_limit_are_passed_on():
    model = Captioner()
    captions = generate_captions(model, Processor(), clips(), parallel=True, max_new_tokens=7, progress=False)
    assert captions == [spoken(n, reverse=True) for n in LENGTHS]
    assert {call[0] for call in model.calls} == {"parallel"} and {call[3] for call in model.calls} == {7}
    model = Captioner()
    generate_captions(model, Processor(), clips(), max_new_tokens=7, progress=False)
    assert {call[0] for call in model.calls} == {"generate"}
    assert all(call[3] == {"max_new_tokens": 7} for call in model.calls)
    # no limit given: the model's own (no max_new_tokens argument at all)
    model = Captioner()
    generate_captions(model, Processor(), clips(), progress=False)
    assert all(call[3] == {} for call in model.calls)
    model = Captioner()
    generate_captions(model, Processor(), clips(), parallel=True, progress=False)
    assert all(call[3] is None for call in model.calls)


def test_the_model_runs_in_eval_mode_on_its_dtype_and_gets_its_mode_back():
    model = Captioner(dtype=torch.float64).train()
    generate_captions(model, Processor(), clips(), batch_size=2, progress=False)
    assert model.training
    assert all(dtype == torch.float64 and not training for _, dtype, _, _, training in model.calls)
    # a processor without an attention mask: the model gets None (and captions the padded length)
    model = Captioner().eval()
    assert (
        generate_captions(model, Processor(mask=False), clips(LENGTHS[:2]), batch_size=2, progress=False)
        == [spoken(LENGTHS[1])] * 2
    )
    assert not model.training and model.calls[0][2] is True


def test_clip_seconds_cuts_each_clip_to_its_head():
    model = Captioner()
    captions = generate_captions(model, Processor(), clips(), clip_seconds=0.2, progress=False)
    assert captions == [spoken(min(n, 3200)) for n in LENGTHS]
    # rounded, not floored: 0.12497 s is 1999.52 samples -> 2000
    captions = generate_captions(model, Processor(), clips([2400]), clip_seconds=0.12497, progress=False)
    assert captions == [spoken(2000)]


def test_a_bad_clip_is_named_by_its_index_in_the_dataset():
    model, processor = Captioner(), Processor()
    lengths = [1600, 1600, 1600, 1599, 1600]  # clip 3 is under 0.1 s
    with pytest.raises(
        CorruptAudioError, match=r"^clip 3 cannot be captioned: the clip lasts 99.9 ms, too short"
    ):
        generate_captions(model, processor, clips(lengths), batch_size=2, progress=False)
    with pytest.raises(CorruptAudioError, match=r"^clip 3 cannot be captioned"):
        generate_captions(model, processor, clips(lengths), batch_size=3, progress=False)


def test_check_captionable_takes_exactly_a_tenth_of_a_second():
    wave = np.zeros(1600, dtype=np.float32)
    assert check_captionable(wave, SR) is wave
    with pytest.raises(ValueError, match="the clip lasts 99.9 ms, too short to caption: at least 0.1 s"):
        check_captionable(wave[:-1], SR)
    assert check_captionable(np.zeros(800), 8000).shape == (800,)


def test_caption_waveforms_of_no_clip_is_no_caption_and_takes_a_feature_extractor_as_processor():
    model = Captioner()
    assert caption_waveforms(model, Processor(), []) == [] and model.calls == []
    with pytest.raises(TypeError, match="Processor names no sampling_rate: is it the captioner's processor"):
        processor = Processor()
        processor.feature_extractor = object()
        caption_waveforms(model, processor, [np.zeros(1600)])

    class Extractor(Processor):
        sampling_rate = 8000

    extractor = Extractor()
    del extractor.feature_extractor
    assert caption_waveforms(model, extractor, [np.zeros(1600)]) == [spoken(1600)]
    assert extractor.calls == [(1, 8000)]


def test_arguments_are_checked_before_any_clip_is_read():
    model, processor = Captioner(), Processor()
    for batch_size in (0, -1, True, 2.0, None):
        with pytest.raises(ValueError, match=f"batch_size must be a positive integer, got {batch_size!r}"):
            generate_captions(model, processor, clips(), batch_size=batch_size, progress=False)
    for seconds in (0, -1.0):
        with pytest.raises(ValueError, match=f"clip_seconds must be positive, got {seconds!r}"):
            generate_captions(model, processor, clips(), clip_seconds=seconds, progress=False)
    with pytest.raises(TypeError, match="dataset must be a datasets.Dataset or IterableDataset, got list"):
        generate_captions(model, processor, [np.zeros(1600)], progress=False)

    class Mute(torch.nn.Module):
        def can_generate(self):
            return False

    with pytest.raises(TypeError, match="Mute cannot generate text: it has no caption decoder"):
        generate_captions(Mute(), processor, clips(), progress=False)
    with pytest.raises(
        TypeError,
        match=r"^Mute has no parallel_generate: parallel \(PAR\) decoding needs a captioner such as "
        "ZipformerForConditionalGeneration$",
    ):
        generate_captions(Mute(), processor, clips(), parallel=True, progress=False)
    assert model.calls == [] and processor.calls == []


def test_the_audio_column_can_be_named():
    # a decoy "audio" column, the one that would be found without audio_column
    dataset = Dataset.from_dict({"audio": records([2000] * len(LENGTHS)), "sound": records(LENGTHS)})
    dataset = dataset.cast_column("audio", Audio()).cast_column("sound", Audio())
    assert generate_captions(Captioner(), Processor(), dataset, progress=False) == [spoken(2000)] * len(
        LENGTHS
    )
    captions = generate_captions(Captioner(), Processor(), dataset, audio_column="sound", progress=False)
    assert captions == [spoken(n) for n in LENGTHS]
    with pytest.raises(ValueError, match="audio_column 'noise' not in the dataset columns"):
        generate_captions(Captioner(), Processor(), dataset, audio_column="noise", progress=False)


# ---- evaluate_captioning --------------------------------------------------------------------------------


def test_evaluate_captioning_scores_the_captions_and_returns_the_first_examples():
    # Clip 0's reference is its caption, clip 1 has two references, the rest are other numbers.
    references = [[spoken(1600)], [spoken(9999), spoken(2400)], ["three two"], ["four"], ["nothing"]]
    dataset = clips(captions=references)
    model = Captioner()
    metrics, examples = evaluate_captioning(model, Processor(), dataset, progress=False)
    predictions = [spoken(n) for n in LENGTHS]
    assert metrics == caption_metrics(predictions, references)
    assert metrics["bleu_1"] > 0 and metrics["cider"] > 0
    # the default: the first five (references, prediction) pairs
    assert examples == list(zip(references, predictions, strict=True))
    _, examples = evaluate_captioning(model, Processor(), dataset, num_examples=2, progress=False)
    assert [prediction for _, prediction in examples] == predictions[:2]
    assert evaluate_captioning(model, Processor(), dataset, num_examples=0, progress=False)[1] == []


def test_evaluate_captioning_passes_its_options_on():
    dataset = clips(captions=["x"] * len(LENGTHS)).rename_column("caption", "text")
    model, processor = Captioner(), Processor()
    metrics, examples = evaluate_captioning(
        model,
        processor,
        dataset,
        "text",
        True,
        batch_size=2,
        max_new_tokens=3,
        clip_seconds=0.2,
        progress=False,
    )
    assert [prediction for _, prediction in examples] == [spoken(min(n, 3200), reverse=True) for n in LENGTHS]
    assert {call[3] for call in model.calls} == {3} and [size for size, _ in processor.calls] == [2, 2, 1]
    assert set(metrics) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider"}


def test_evaluate_captioning_checks_its_arguments():
    dataset = clips(captions=["x"] * len(LENGTHS))
    for num_examples in (-1, True, 1.0):
        with pytest.raises(
            ValueError, match=f"num_examples must be a non-negative integer, got {num_examples!r}"
        ):
            evaluate_captioning(Captioner(), Processor(), dataset, num_examples=num_examples, progress=False)
    with pytest.raises(
        ValueError, match=r"caption_column 'text' not in the dataset columns \['audio', 'caption'\]"
    ):
        evaluate_captioning(Captioner(), Processor(), dataset, "text", progress=False)


def test_evaluate_captioning_defaults_are_batches_of_sixteen_and_five_examples():
    lengths = [1600 + 100 * i for i in range(17)]
    dataset = clips(lengths, captions=[spoken(n) for n in lengths])
    processor = Processor()
    _, examples = evaluate_captioning(Captioner(), processor, dataset, progress=False)
    assert [size for size, _ in processor.calls] == [16, 1]
    assert examples == [(spoken(n), spoken(n)) for n in lengths[:5]]


def test_evaluate_captioning_reads_the_audio_column_it_is_given():
    # a decoy "audio" column, the one that would be found without audio_column
    dataset = Dataset.from_dict(
        {"audio": records([2000] * 3), "sound": records(LENGTHS[:3]), "caption": ["x"] * 3}
    )
    dataset = dataset.cast_column("audio", Audio()).cast_column("sound", Audio())
    _, examples = evaluate_captioning(Captioner(), Processor(), dataset, audio_column="sound", progress=False)
    assert [prediction for _, prediction in examples] == [spoken(n) for n in LENGTHS[:3]]
