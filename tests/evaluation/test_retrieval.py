"""Audio-text retrieval recall and zero-shot tagging: hand-computed recalls for a permuted pairing, ties,
k capped at the number of pairs, mAP 1 when clip i matches label i, and both end to end on a tiny
`ZipformerForAudioTextContrastive` over a ``datasets`` split."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clap_model_utils import tiny_clap
from datasets import Audio, ClassLabel, Dataset, Features, List, Value

from hf_audiorep.data.decode import decode_audio
from hf_audiorep.data.text_tokenizers import train_wordpiece_tokenizer
from hf_audiorep.evaluation.retrieval import (
    embed_audio_text,
    retrieval_recall,
    zero_shot_scores,
    zero_shot_tagging,
)
from hf_audiorep.modeling import ZipformerFbankFeatureExtractor

SR = 16000


def test_perfect_pairing_gives_recall_one():
    audio = torch.eye(5)
    result = retrieval_recall(audio, audio.clone(), ks=(1, 3))
    assert result == {
        "audio_to_text_R@1": 1.0,
        "audio_to_text_R@3": 1.0,
        "text_to_audio_R@1": 1.0,
        "text_to_audio_R@3": 1.0,
    }


def test_permuted_pairing_gives_the_hand_computed_recalls():
    # Text j is nearest to audio perm[j]: clips 0 and 1 find theirs, clips 2 and 3 have swapped texts.
    audio = torch.eye(4)
    text = audio[[0, 1, 3, 2]] + 0.1 * audio  # text 2 = e3 + 0.1 e2: its own clip second, clip 3 first
    result = retrieval_recall(audio, text, ks=(1, 2))
    # audio 2's scores over texts: [0, 0, 0.1, 1] / norms -> its own text (2) ranks 2nd; same for audio 3
    assert result["audio_to_text_R@1"] == pytest.approx(0.5)
    assert result["audio_to_text_R@2"] == pytest.approx(1.0)
    assert result["text_to_audio_R@1"] == pytest.approx(0.5)
    assert result["text_to_audio_R@2"] == pytest.approx(1.0)


def test_the_two_directions_differ_when_one_text_is_a_hub():
    # Scores a_i . t_j = t_j[i]: [[1, .8, 0], [0, .6, 0], [0, 0, 1]]. Every clip's own text scores highest in
    # its row, but text 1 is closer to clip 0 (.8) than to its own clip (.6).
    audio = torch.eye(3)
    text = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]])
    result = retrieval_recall(audio, text, ks=(1,))
    assert result["audio_to_text_R@1"] == pytest.approx(1.0)
    assert result["text_to_audio_R@1"] == pytest.approx(2 / 3)


def test_ties_count_against_the_query_and_k_is_capped_at_the_number_of_pairs():
    constant = torch.ones(3, 4)
    result = retrieval_recall(constant, constant, ks=(1, 2, 3, 10))
    # every text scores alike: the true one is ranked last (3rd), so R@1 = R@2 = 0 and R@3 = R@10 = 1
    assert result["audio_to_text_R@1"] == result["audio_to_text_R@2"] == 0.0
    assert result["audio_to_text_R@3"] == result["audio_to_text_R@10"] == 1.0


def test_recall_errors():
    with pytest.raises(ValueError, match="paired"):
        retrieval_recall(torch.eye(3), torch.eye(4)[:, :3][:2])
    with pytest.raises(ValueError, match="ks"):
        retrieval_recall(torch.eye(3), torch.eye(3), ks=(0,))


def test_zero_shot_scores_give_map_one_when_clip_i_matches_label_i():
    generator = torch.Generator().manual_seed(0)
    labels = F.normalize(torch.randn(4, 8, generator=generator), dim=-1)
    audio = labels[[0, 1, 2, 3, 0, 2]] + 0.05 * torch.randn(6, 8, generator=generator)
    targets = np.eye(4)[[0, 1, 2, 3, 0, 2]]
    result = zero_shot_scores(audio, labels, targets)
    assert result["zero_shot_mAP"] == pytest.approx(1.0)
    # chance: each class's prevalence, averaged: (2 + 1 + 2 + 1) / 6 / 4
    assert result["chance_mAP"] == pytest.approx(0.25)
    assert result["num_clips"] == 6 and result["num_classes_evaluated"] == 4
    # chance skips the classes without a positive: counts [3, 1, 0] of 6 clips give (1/2 + 1/6) / 2
    few = np.zeros((6, 3))
    few[:3, 0] = few[0, 1] = 1
    assert zero_shot_scores(audio, labels[:3], few)["chance_mAP"] == pytest.approx(1 / 3)
    # the same embeddings against shuffled label texts score below 1
    assert zero_shot_scores(audio, labels[[1, 0, 3, 2]], targets)["zero_shot_mAP"] < 0.8


# ---- end to end on a datasets split -------------------------------------------------------------------

NAMES = ["low", "high"]
CAPTIONS = ["a low hum", "a high whistle"]


def _tone(i: int) -> np.ndarray:
    """Half a second of a 200 Hz tone (even i) or a 3 kHz one (odd i)."""
    t = np.arange(int(0.5 * SR)) / SR
    return (0.4 * np.sin(2 * np.pi * (200.0 if i % 2 == 0 else 3000.0) * t)).astype(np.float32)


def _tones(n: int = 6) -> Dataset:
    features = Features(
        {
            "audio": Audio(sampling_rate=SR),
            "labels": List(ClassLabel(names=NAMES)),
            "caption": Value("string"),
        }
    )
    audio = [{"array": _tone(i), "sampling_rate": SR} for i in range(n)]
    labels = [[i % 2] for i in range(n)]
    captions = [f"{CAPTIONS[i % 2]} number {i}" for i in range(n)]
    return Dataset.from_dict({"audio": audio, "labels": labels, "caption": captions}, features=features)


@pytest.fixture(scope="module")
def tiny():
    tokenizer = train_wordpiece_tokenizer(CAPTIONS * 4 + ["the sound of number 0 1 2 3 4 5"], vocab_size=60)
    return tiny_clap(tokenizer), ZipformerFbankFeatureExtractor(num_mel_bins=32), tokenizer


def test_embed_audio_text_returns_paired_rows_of_the_split(tiny):
    model, extractor, tokenizer = tiny
    model.train()
    dataset = _tones()
    audio, text = embed_audio_text(
        model, extractor, tokenizer, dataset, "caption", batch_size=4, clip_seconds=0.5
    )
    assert model.training  # mode restored
    assert audio.shape == text.shape == (6, 12)
    np.testing.assert_allclose(np.linalg.norm(audio, axis=1), 1.0, rtol=1e-5)
    model.eval()
    with torch.no_grad():
        # decoded as the stream decodes it: the stored 16-bit audio, whose quantisation noise a pure tone's
        # empty mel bands (log of near zero) make visible
        clip = torch.from_numpy(decode_audio(dataset[3]["audio"], SR)).float()
        features, mask = extractor.batch_features(clip[None].float(), torch.tensor([clip.shape[-1]]))
        expected_audio = model.get_audio_features(features, mask)[0].numpy()
        tokens = tokenizer([dataset[3]["caption"]], return_tensors="pt")
        expected_text = model.get_text_features(tokens["input_ids"], tokens["attention_mask"])[0].numpy()
    np.testing.assert_allclose(audio[3], expected_audio, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(text[3], expected_text, rtol=1e-4, atol=1e-5)
    assert set(retrieval_recall(audio, text)) == {
        "audio_to_text_R@1",
        "audio_to_text_R@10",
        "text_to_audio_R@1",
        "text_to_audio_R@10",
    }
    with pytest.raises(ValueError, match="text_column"):
        embed_audio_text(model, extractor, tokenizer, dataset, "captions")


def test_zero_shot_tagging_end_to_end(tiny):
    model, extractor, tokenizer = tiny
    result = zero_shot_tagging(
        model,
        extractor,
        tokenizer,
        _tones(),
        NAMES,
        template="the sound of {}",
        batch_size=4,
        clip_seconds=0.5,
    )
    assert 0.0 < result["zero_shot_mAP"] <= 1.0
    assert result["chance_mAP"] == pytest.approx(0.5)
    assert result["num_clips"] == 6 and result["num_classes_evaluated"] == 2
    with pytest.raises(ValueError, match="template"):
        zero_shot_tagging(model, extractor, tokenizer, _tones(), NAMES, template="no slot")
