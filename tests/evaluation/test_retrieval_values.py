"""Values of audio-text retrieval and zero-shot tagging checked by hand: cosine (not dot-product) ranking in
both directions, partial ties, R@k at and below the number of pairs, the input checks; zero-shot mAP, mAUC
and chance on a three-clip case; and text embedding in batches and truncated, on a tiny CLAP model."""

import numpy as np
import pytest
import torch
from clap_model_utils import tiny_clap
from datasets import Audio, ClassLabel, Dataset, Features, List, Value

from hf_audiorep.data.decode import decode_audio
from hf_audiorep.data.text_tokenizers import train_bpe_tokenizer
from hf_audiorep.evaluation.retrieval import (
    embed_audio_text,
    embed_texts,
    retrieval_recall,
    zero_shot_scores,
    zero_shot_tagging,
)
from hf_audiorep.modeling import ZipformerFbankFeatureExtractor

SR = 16000

# ---- retrieval_recall ---------------------------------------------------------------------------------


def test_recall_ranks_by_cosine_whatever_the_norms():
    # Cosines: audio 0 against texts [0.995, 0.743], audio 1 against [0.0995, 0.669]. A dot product would
    # rank the long text 1 first for audio 0 and the long audio 1 first for text 1.
    audio = torch.tensor([[1.0, 0.0], [0.0, 100.0]])
    text = torch.tensor([[1.0, 0.1], [10.0, 9.0]])
    result = retrieval_recall(audio, text, ks=(1, 2))
    assert result == {
        "audio_to_text_R@1": 1.0,
        "audio_to_text_R@2": 1.0,
        # text 1: audio 0 (0.743) beats its own audio 1 (0.669)
        "text_to_audio_R@1": 0.5,
        "text_to_audio_R@2": 1.0,
    }


def test_each_row_is_normalised_on_its_own_not_the_matrix_as_a_whole():
    # Cosines: audio 0 (unit) against texts [0.981, 0.196], the long audio 1 against [0.860, 0.802]: audio 1
    # ranks text 0 first, every text ranks its own audio first. Scaling the audio matrix as a whole keeps
    # audio 1 long, and then text 0 would rank it first (11.6 against 0.98).
    audio = torch.tensor([[1.0, 0.0], [10.0, 9.0]])
    text = torch.tensor([[1.0, 0.2], [0.2, 1.0]])
    expected = {"audio_to_text_R@1": 0.5, "audio_to_text_R@2": 1.0, "text_to_audio_R@1": 1.0}
    assert retrieval_recall(audio, text, ks=(1, 2)) == {**expected, "text_to_audio_R@2": 1.0}
    # the roles swapped: the long rows are now texts
    assert retrieval_recall(text, audio, ks=(1,)) == {"audio_to_text_R@1": 1.0, "text_to_audio_R@1": 0.5}


def test_a_partial_tie_ranks_the_true_item_after_the_items_it_ties_with():
    # Texts 0 and 1 are the same: audio 0 and 1 score both 0.707 and rank their own text 2nd, audio 2 1st;
    # from the texts' side the same.
    audio = torch.eye(3)
    tied = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    result = retrieval_recall(audio, tied, ks=(1, 2))
    assert result["audio_to_text_R@1"] == pytest.approx(1 / 3)
    assert result["text_to_audio_R@1"] == pytest.approx(1 / 3)
    assert result["audio_to_text_R@2"] == result["text_to_audio_R@2"] == 1.0
    # Text 0 made e0: audio 0 finds it (1 > 0.707); text 1 still scores audio 0 and 1 alike (tie: rank 2).
    text = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    result = retrieval_recall(audio, text, ks=(1, 2))
    assert result["audio_to_text_R@1"] == pytest.approx(1.0)
    assert result["text_to_audio_R@1"] == pytest.approx(2 / 3)
    assert result["text_to_audio_R@2"] == pytest.approx(1.0)


def test_recall_at_k_counts_the_rows_ranked_within_k_up_to_and_past_the_number_of_pairs():
    # Texts e0..e3, every audio (4, 3, 2, 1): audio i ranks its own text i + 1st, so audio_to_text R@k is
    # k / 4. Every text scores the four (equal) audios alike: its own ranks 4th, R@k is 0 below k = 4.
    audio = torch.tensor([[4.0, 3.0, 2.0, 1.0]]).repeat(4, 1)
    result = retrieval_recall(audio, torch.eye(4), ks=(1, 2, 3, 4, 5))
    for k in range(1, 6):
        assert result[f"audio_to_text_R@{k}"] == pytest.approx(min(k, 4) / 4), k
        assert result[f"text_to_audio_R@{k}"] == (1.0 if k >= 4 else 0.0), k


def test_ks_are_checked_and_named_as_integers():
    audio = torch.eye(3)
    result = retrieval_recall(audio, audio, ks=(2.0, np.int64(1)))
    assert set(result) == {"audio_to_text_R@2", "audio_to_text_R@1", "text_to_audio_R@2", "text_to_audio_R@1"}
    for ks in [(), (True,), (1.5,), (-1,), (1, 0)]:
        with pytest.raises(ValueError, match="ks must be positive integers"):
            retrieval_recall(audio, audio, ks=ks)


def test_inputs_are_checked_and_any_numeric_array_is_accepted():
    ints = [[1, 0], [0, 1]]
    assert retrieval_recall(ints, np.array(ints, dtype=np.float64), ks=(1,))["audio_to_text_R@1"] == 1.0
    leaf = torch.eye(2, requires_grad=True)
    assert retrieval_recall(leaf, leaf, ks=(1,))["text_to_audio_R@1"] == 1.0
    for bad in [torch.ones(3), torch.ones(2, 2, 2), torch.ones(0, 2)]:
        with pytest.raises(ValueError, match=r"audio_embeds must be a non-empty \(rows, dim\) array"):
            retrieval_recall(bad, torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"text_embeds must be a non-empty"):
        retrieval_recall(torch.ones(2, 2), torch.ones(0, 2))
    # a single pair is fine; same rows but another width is not
    assert retrieval_recall(torch.ones(1, 2), torch.ones(1, 2), ks=(1,))["audio_to_text_R@1"] == 1.0
    with pytest.raises(
        ValueError, match=r"audio_embeds \(2, 2\) and text_embeds \(2, 3\) must be paired rows of one width"
    ):
        retrieval_recall(torch.ones(2, 2), torch.ones(2, 3))


# ---- zero_shot_scores ----------------------------------------------------------------------------------


def test_zero_shot_map_mauc_and_chance_by_hand():
    # Labels e0, e1. Clip 1 is long (x10): cosine ignores it. Scores (cosine):
    #   class 0: clips [1, 0.6, 0.8], positives {0, 1}: ranking 0+, 2-, 1+ -> AP (1 + 2/3) / 2 = 5/6
    #   class 1: clips [0, 0.8, 0.6], positive {2}: ranking 1-, 2+, 0- -> AP 1/2
    # AUC: class 0, positives (1, 0.6) against the negative 0.8: 1 of 2 pairs; class 1: 0.6 against
    # (0, 0.8): 1 of 2. Chance: prevalence (2/3 + 1/3) / 2.
    audio = torch.tensor([[1.0, 0.0], [6.0, 8.0], [0.8, 0.6]])
    labels = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    targets = [[1, 0], [1, 0], [0, 1]]
    result = zero_shot_scores(audio, labels, targets)
    assert result == {
        "zero_shot_mAP": pytest.approx((5 / 6 + 1 / 2) / 2),
        "zero_shot_mAUC": pytest.approx(0.5),
        "chance_mAP": pytest.approx(0.5),
        "num_clips": 3,
        "num_classes_evaluated": 2,
    }


def test_a_soft_target_of_one_half_counts_as_a_positive_in_chance_as_in_the_map():
    audio = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    labels = torch.eye(2)
    soft = [[1.0, 0.0], [0.0, 0.5], [0.0, 1.0]]
    result = zero_shot_scores(audio, labels, soft)
    # prevalences 1/3 and 2/3 (0.5 is a positive); each class ranks its positives first
    assert result["chance_mAP"] == pytest.approx(1 / 2)
    assert result["zero_shot_mAP"] == pytest.approx(1.0)
    assert result["num_classes_evaluated"] == 2


def test_each_label_embedding_is_normalised_on_its_own():
    # Label 0 points at 45 degrees, label 1 along x; normalising each dimension over the labels instead would
    # turn label 0 to 66 degrees. Cosines of the clips (at 6, 53 and 90 degrees):
    #   class 0: [0.774, 0.990, 0.707], positive clip 0 ranks 2nd -> AP 1/2 (at 66 degrees it ranks 3rd)
    #   class 1: [0.995, 0.600, 0.000], positive clip 1 ranks 2nd -> AP 1/2
    # AUC: each positive beats one of its two negatives. Chance: (1/3 + 1/3) / 2.
    audio = torch.tensor([[1.0, 0.1], [0.6, 0.8], [0.0, 1.0]])
    labels = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    result = zero_shot_scores(audio, labels, [[1, 0], [0, 1], [0, 0]])
    assert result == {
        "zero_shot_mAP": pytest.approx(0.5),
        "zero_shot_mAUC": pytest.approx(0.5),
        "chance_mAP": pytest.approx(1 / 3),
        "num_clips": 3,
        "num_classes_evaluated": 2,
    }


def test_zero_shot_input_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"audio_embeds \(2\) and label_embeds \(3\) differ in width"):
        zero_shot_scores(torch.ones(4, 2), torch.ones(5, 3), np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"targets must be \(clips, labels\) = \(4, 5\), got \(5, 4\)"):
        zero_shot_scores(torch.ones(4, 2), torch.ones(5, 2), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="label_embeds must be a non-empty"):
        zero_shot_scores(torch.ones(4, 2), torch.ones(0, 2), np.zeros((4, 0)))
    with pytest.raises(
        ValueError, match=r"^audio_embeds must be a non-empty \(rows, dim\) array, got shape \(0, 2\)"
    ):
        zero_shot_scores(torch.ones(0, 2), torch.ones(5, 2), np.zeros((0, 5)))


# ---- on a tiny model ------------------------------------------------------------------------------------

NAMES = ["low", "high"]
TEXTS = [
    "a low hum",
    "a high whistle over a low hum and a long rumble of low noise, again and again, all night long",
    "high",
    "the sound of low",
    "number 3",
]


@pytest.fixture(scope="module")
def tiny():
    """A tiny CLAP whose texts differ: at initialisation its [CLS] state barely depends on the tokens (every
    prompt embeds alike), a mean over word embeddings of unit scale does. The tokenizer is a BPE one: its
    training is deterministic (WordPiece's is not, see test_text_tokenizers_values.py), so the values of
    the tests below are the same on every run."""
    tokenizer = train_bpe_tokenizer(TEXTS * 4 + ["the sound of number 0 1 2 3 4 5"], vocab_size=300)
    model = tiny_clap(tokenizer, text_pooling="mean").eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        weight = model.text_model.embeddings.word_embeddings.weight
        weight.copy_(torch.randn(weight.shape, generator=generator))
    return model, ZipformerFbankFeatureExtractor(num_mel_bins=32), tokenizer


def _one_by_one(model, tokenizer, texts, max_length=None):
    rows = []
    with torch.no_grad():
        for text in texts:
            kwargs = {} if max_length is None else {"truncation": True, "max_length": max_length}
            tokens = tokenizer([text], return_tensors="pt", **kwargs)
            rows.append(model.get_text_features(tokens["input_ids"], tokens["attention_mask"])[0].numpy())
    return np.stack(rows)


def test_embed_texts_in_padded_batches_keeps_every_text_in_order(tiny):
    model, _, tokenizer = tiny
    # batches of 2 over 5 texts of different lengths: padding within a batch, a last batch of one
    embeds = embed_texts(model, tokenizer, TEXTS, batch_size=2)
    assert embeds.shape == (5, 12) and embeds.dtype == np.float32
    expected = _one_by_one(model, tokenizer, TEXTS, max_length=30)
    np.testing.assert_allclose(embeds, expected, rtol=1e-4, atol=1e-5)
    assert embed_texts(model, tokenizer, TEXTS[:1], batch_size=2).shape == (1, 12)


def test_embed_texts_truncates_at_max_length(tiny):
    model, _, tokenizer = tiny
    long_text = TEXTS[1]
    assert len(tokenizer(long_text).input_ids) > 30  # the default limit bites on it
    for max_length in (4, None):
        kwargs = {} if max_length is None else {"max_length": max_length}
        embeds = embed_texts(model, tokenizer, [long_text], **kwargs)
        expected = _one_by_one(model, tokenizer, [long_text], max_length=max_length or 30)
        np.testing.assert_allclose(embeds, expected, rtol=1e-4, atol=1e-5)
    full = _one_by_one(model, tokenizer, [long_text])
    assert not np.allclose(embed_texts(model, tokenizer, [long_text], max_length=4), full, atol=1e-3)


def _tone(i: int, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.4 * np.sin(2 * np.pi * (200.0 + 700.0 * i) * t)).astype(np.float32)


def _dataset(labels, waveforms=None, label_feature=None) -> Dataset:
    """Clips with multi-hot ``labels`` (ClassLabel indices, or names without ``label_feature``) and texts."""
    n = len(labels)
    waveforms = waveforms or [_tone(i) for i in range(n)]
    features = {"audio": Audio(sampling_rate=SR), "text": Value("string")}
    if label_feature is not None:
        features["labels"] = label_feature
    return Dataset.from_dict(
        {
            "audio": [{"array": wave, "sampling_rate": SR} for wave in waveforms],
            "labels": labels,
            "text": [TEXTS[i % len(TEXTS)] for i in range(n)],
        },
    ).cast(Features({**Dataset.from_dict({"labels": labels}).features, **features}))


class LinearClap(torch.nn.Module):
    """A stand-in for the CLAP model with embeddings of known, input-dependent directions: a fixed random
    projection of the clip's mean fbank frame and of the mean word embedding of the text. A random-weight
    CLAP embeds every prompt (and tone) nearly alike, and then no prompt or class order could show."""

    def __init__(self, num_mel_bins: int, vocab_size: int, dim: int = 8):
        super().__init__()
        generator = torch.Generator().manual_seed(2)
        self.audio = torch.nn.Parameter(torch.randn(num_mel_bins, dim, generator=generator))
        self.words = torch.nn.Parameter(torch.randn(vocab_size, dim, generator=generator))

    def get_audio_features(self, features, mask):
        mask = mask.float().unsqueeze(-1)
        frame = (features * mask).sum(1) / mask.sum(1)
        return torch.nn.functional.normalize(frame @ self.audio, dim=-1)

    def get_text_features(self, input_ids, attention_mask):
        mask = attention_mask.float().unsqueeze(-1)
        return torch.nn.functional.normalize((self.words[input_ids] * mask).sum(1) / mask.sum(1), dim=-1)


def _audio_features(model, extractor, waveform: np.ndarray) -> np.ndarray:
    clip = torch.from_numpy(waveform).float()[None]
    with torch.no_grad():
        features, mask = extractor.batch_features(clip, torch.tensor([clip.shape[-1]]))
        return model.get_audio_features(features, mask)[0].numpy()


def test_embed_audio_text_crops_each_clip_to_clip_seconds_at_the_extractors_rate(tiny):
    _, _, tokenizer = tiny
    extractor = ZipformerFbankFeatureExtractor(num_mel_bins=32, sampling_rate=8000)
    model = LinearClap(32, len(tokenizer))
    dataset = _dataset([[]] * 3)
    audio, text = embed_audio_text(model, extractor, tokenizer, dataset, batch_size=2, clip_seconds=0.25)
    for i in range(3):
        # the stream's decoder resamples to the extractor's 8 kHz and keeps the first 0.25 s
        head = decode_audio(dataset[i]["audio"], 8000)[:2000]
        np.testing.assert_allclose(audio[i], _audio_features(model, extractor, head), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(text, embed_texts(model, tokenizer, TEXTS[:3]), rtol=1e-5, atol=1e-6)


def test_embed_audio_text_defaults_read_the_text_column_the_first_ten_seconds_and_thirty_tokens(tiny):
    _, extractor, tokenizer = tiny
    model = LinearClap(32, len(tokenizer))
    # 10 s of one tone then 0.5 s of another: only the first 10 s are heard
    long_clip = np.concatenate([_tone(0, 10.0), _tone(5)])
    dataset = _dataset([[], []], waveforms=[long_clip, _tone(1)])
    audio, text = embed_audio_text(model, extractor, tokenizer, dataset)
    expected = _audio_features(model, extractor, decode_audio(dataset[0]["audio"], SR)[: 10 * SR])
    np.testing.assert_allclose(audio[0], expected, rtol=1e-4, atol=1e-5)
    # text 1 is longer than 30 tokens: cut at 30
    np.testing.assert_allclose(text, _one_by_one(model, tokenizer, TEXTS[:2], max_length=30), rtol=1e-5)
    assert not np.allclose(text[1], _one_by_one(model, tokenizer, TEXTS[1:2])[0], atol=1e-3)
    counts = dataset.add_column("count", [1, 2])
    with pytest.raises(TypeError, match="column 'count' must hold one string per clip"):
        embed_audio_text(model, extractor, tokenizer, counts, "count", clip_seconds=0.5)


def test_zero_shot_tagging_scores_the_prompts_against_the_labels_in_label_names_order(tiny):
    _, extractor, tokenizer = tiny
    model = LinearClap(32, len(tokenizer)).train()
    # Label names, read in label_names' order: class "low" in two clips, "high" in four, one clip with none.
    # Which prompt meets which column of the targets changes the mAP, so a class order that is not
    # label_names' shows.
    labels = [["low"], ["high"], ["high"], ["low", "high"], ["high"], []]
    dataset = _dataset(labels)
    audio, _ = embed_audio_text(model, extractor, tokenizer, dataset, batch_size=4, clip_seconds=0.5)
    results = []
    for names, template in [(NAMES, "{}"), (NAMES[::-1], "{}"), (NAMES, "the sound of {}")]:
        targets = np.array([[name in row for name in names] for row in labels], dtype=np.float64)
        prompts = [template.format(name) for name in names]
        expected = zero_shot_scores(audio, embed_texts(model, tokenizer, prompts), targets)
        kwargs = {} if template == "{}" else {"template": template}
        result = zero_shot_tagging(
            model, extractor, tokenizer, dataset, names, batch_size=4, clip_seconds=0.5, **kwargs
        )
        assert result == pytest.approx(expected, rel=1e-6), (names, template)
        assert model.training  # mode restored
        results.append(result["zero_shot_mAP"])
        # the prompts against the classes in the other order score otherwise: the check above can fail
        swapped = zero_shot_scores(audio, embed_texts(model, tokenizer, prompts[::-1]), targets)
        assert swapped["zero_shot_mAP"] != pytest.approx(expected["zero_shot_mAP"], rel=1e-6)
    # the template changes the prompts' embeddings, so the scores
    assert results[2] != pytest.approx(results[0], rel=1e-6)


def test_zero_shot_tagging_hears_the_first_ten_seconds_by_default(tiny):
    _, extractor, tokenizer = tiny
    model = LinearClap(32, len(tokenizer))
    long_clip = np.concatenate([_tone(0, 10.0), _tone(5)])
    labels = [["low"], ["high"], ["high"]]
    dataset = _dataset(labels, waveforms=[long_clip, _tone(1), _tone(2)])
    audio, _ = embed_audio_text(model, extractor, tokenizer, dataset)
    targets = np.array([[name in row for name in NAMES] for row in labels], dtype=np.float64)
    expected = zero_shot_scores(audio, embed_texts(model, tokenizer, NAMES), targets)
    assert zero_shot_tagging(model, extractor, tokenizer, dataset, NAMES) == pytest.approx(expected, rel=1e-6)


def test_zero_shot_tagging_reads_a_class_label_column_in_label_names_order(tiny):
    _, extractor, tokenizer = tiny
    model = LinearClap(32, len(tokenizer))
    labels = [[0], [1], [1], [0, 1], [1], []]
    class_labels = _dataset(labels, label_feature=List(ClassLabel(names=NAMES)))
    names = [[NAMES[i] for i in row] for row in labels]
    as_names = zero_shot_tagging(model, extractor, tokenizer, _dataset(names), NAMES[::-1], clip_seconds=0.5)
    try:
        result = zero_shot_tagging(model, extractor, tokenizer, class_labels, NAMES[::-1], clip_seconds=0.5)
    except ValueError as err:  # refusing the order is as good as reading it right
        assert "orders its classes" in str(err)
        return
    assert result == pytest.approx(as_names, rel=1e-6)


def test_embed_audio_text_truncates_the_texts_at_max_text_length(tiny):
    _, extractor, tokenizer = tiny
    model = LinearClap(32, len(tokenizer))
    dataset = _dataset([[], []])
    _, text = embed_audio_text(model, extractor, tokenizer, dataset, clip_seconds=0.25, max_text_length=4)
    np.testing.assert_allclose(text, _one_by_one(model, tokenizer, TEXTS[:2], max_length=4), rtol=1e-5)
    # text 1 is cut by 4 tokens, not by the default 30
    assert not np.allclose(text[1], _one_by_one(model, tokenizer, TEXTS[1:2], max_length=30)[0], atol=1e-3)


def test_zero_shot_tagging_refuses_labels_that_label_names_does_not_name(tiny):
    _, extractor, tokenizer = tiny
    model = LinearClap(32, len(tokenizer))
    dataset = _dataset([["low"], ["bark", "high"], ["hiss"]])
    with pytest.raises(
        ValueError, match=r"^the dataset has labels that label_names does not name: \['bark', 'hiss'\]$"
    ):
        zero_shot_tagging(model, extractor, tokenizer, dataset, NAMES, clip_seconds=0.5)


class RecordingClap(LinearClap):
    """`LinearClap` that records, per call of `get_audio_features`, the frames each clip of the batch has."""

    def __init__(self, *args):
        super().__init__(*args)
        self.heard: list[list[int]] = []

    def get_audio_features(self, features, mask):
        self.heard.append(mask.sum(1).tolist())
        return super().get_audio_features(features, mask)


def test_defaults_read_batches_of_eight_clips_of_at_most_ten_seconds(tiny):
    _, extractor, tokenizer = tiny
    # nine clips, the first 10.5 s long: batches of 8 and 1, and the first clip heard for 10 s
    labels = [["low"], ["high"], ["high"], ["low"], ["high"], ["low"], ["high"], ["low"], ["high"]]
    dataset = _dataset(labels, waveforms=[np.concatenate([_tone(0, 10.0), _tone(5)])] + [_tone(1)] * 8)
    with torch.no_grad():
        _, ten_seconds = extractor.batch_features(torch.zeros(1, 10 * SR), torch.tensor([10 * SR]))
        _, half_second = extractor.batch_features(torch.zeros(1, SR // 2), torch.tensor([SR // 2]))
    expected = [[int(ten_seconds.sum())] + [int(half_second.sum())] * 7, [int(half_second.sum())]]
    for run in (
        lambda model: embed_audio_text(model, extractor, tokenizer, dataset),
        lambda model: zero_shot_tagging(model, extractor, tokenizer, dataset, NAMES),
    ):
        model = RecordingClap(32, len(tokenizer))
        run(model)
        assert model.heard == expected
