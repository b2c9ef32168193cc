"""The embedded corpus's attribute tasks: what a clip's speech, music and recording are like, beyond
its event labels. Columns and balance, captions that agree with the columns, renders that are audible
(tested on synthetic signals and on clips that differ in one attribute only), determinism."""

import dataclasses
import io

import numpy as np
import pytest
import soundfile as sf
from datasets import Audio, ClassLabel

from hf_audiorep.data.embedded import (
    ATTRIBUTE_TASKS,
    EMBEDDED_ONTOLOGY,
    AttributeTask,
    MusicStyle,
    SpeechStyle,
    corpus,
    load_embedded_corpus,
    recording,
    synth,
)

SR = 16000
SMALL = dict(seed=0, num_train=40, num_validation=0, num_test=16, num_heldout=12, clip_seconds=2.0)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return load_embedded_corpus(**SMALL, cache_dir=tmp_path_factory.mktemp("corpus"))


def _waveforms(dataset) -> list[np.ndarray]:
    raw = dataset.cast_column("audio", Audio(decode=False))["audio"]
    return [sf.read(io.BytesIO(a["bytes"]), dtype="float32")[0] for a in raw]


def _rms(x) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _band_fraction(x, low_hz, high_hz=SR / 2) -> float:
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(x.size, 1 / SR)
    return float(power[(freqs >= low_hz) & (freqs <= high_hz)].sum() / power.sum())


def _found(task: AttributeTask, caption: str) -> set[str]:
    text = caption.lower()
    return {cls for cls, phrases in task.phrases.items() if any(p in text for p in phrases)}


# ---------------------------------------------------------------------------- the task table


def test_attribute_tasks_cover_speech_music_and_recording():
    assert list(ATTRIBUTE_TASKS) == [
        "speech_pitch",
        "speech_rate",
        "speech_voices",
        "music_tempo",
        "music_mode",
        "music_instrument",
        "music_rhythm",
        "room",
        "distance",
        "loudness",
        "quality",
    ]
    for name, task in ATTRIBUTE_TASKS.items():
        assert task.name == task.column == name and len(task.classes) >= 2
        if task.sources is None:  # about the recording: every clip has one
            assert task.names == task.classes
        else:
            assert task.names == (*task.classes, "none") and task.sources <= set(EMBEDDED_ONTOLOGY.names)
            assert not task.applies("none") and not task.applies(len(task.classes))
        assert all(task.applies(i) for i in range(len(task.classes)))
    assert ATTRIBUTE_TASKS["speech_pitch"].sources == {"Male speech", "Female speech", "Child speech"}
    assert "Whisper" in ATTRIBUTE_TASKS["speech_rate"].sources  # unvoiced: a rate but no pitch
    assert ATTRIBUTE_TASKS["music_tempo"].sources == set(ATTRIBUTE_TASKS["music_instrument"].families)
    assert ATTRIBUTE_TASKS["quality"].classes == ("clean", "noisy", "telephone", "clipped")


def test_attribute_phrases_are_unambiguous():
    """No phrase occurs inside another or inside the event captions' words: a phrase found in a caption
    says which class was described."""
    phrases = [p for task in ATTRIBUTE_TASKS.values() for ps in task.phrases.values() for p in ps]
    assert len(set(phrases)) == len(phrases)
    words = [w for ph in EMBEDDED_ONTOLOGY.phrases for w in ph.clauses + ph.nouns]
    for phrase in phrases:
        assert not [p for p in phrases if p != phrase and phrase in p], phrase
        assert not [w for w in words if phrase in w], phrase
    assert all(len(ps) >= 2 for task in ATTRIBUTE_TASKS.values() for ps in task.phrases.values())


# ---------------------------------------------------------------------------- columns and balance


def test_attribute_columns_are_classlabels_with_valid_values(small):
    for split, dataset in small.items():
        features = dataset.features
        for task in ATTRIBUTE_TASKS.values():
            assert isinstance(features[task.column], ClassLabel), task.name
            assert features[task.column].names == list(task.names)
            values = dataset[task.column]
            assert all(0 <= v < len(task.names) for v in values), (split, task.name)
        for row in dataset:
            names = set(row["label_names"])
            for task in ATTRIBUTE_TASKS.values():
                if task.sources is not None:  # the task applies exactly to clips with its sources
                    assert task.applies(row[task.column]) == bool(names & task.sources), (task.name, names)
            instrument = ATTRIBUTE_TASKS["music_instrument"]
            players = [instrument.families[n] for n in names if n in instrument.sources]
            expected = "none" if not players else players[0] if len(players) == 1 else "ensemble"
            assert instrument.names[row[instrument.column]] == expected
            speakers = names & ATTRIBUTE_TASKS["speech_voices"].sources
            if len(speakers) > 1:
                assert ATTRIBUTE_TASKS["speech_voices"].names[row["speech_voices"]] == "several"


def test_attribute_classes_are_balanced_on_the_default_train_split():
    """Drawn without rendering (the plans of the default training split's clips): every task applies to
    enough clips, every class of it is common, and drawn classes follow their weights."""
    plans = [plan for _, plan in corpus._clip_plans("train", 1600, 0, 0, 800)]
    for task in ATTRIBUTE_TASKS.values():
        values = [plan.attributes.values[task.name] for plan in plans]
        applicable = [v for v in values if v != "none"]
        share = len(applicable) / len(values)
        assert share >= (0.15 if task.group != "recording" else 1.0), (task.name, share)
        counts = np.array([applicable.count(c) for c in task.classes])
        if task.weights is None:  # derived from the events: no class is rare
            assert (counts >= 0.03 * len(applicable)).all(), (task.name, counts)
        else:
            expected = task.probabilities() * len(applicable)
            assert (np.abs(counts - expected) < 0.25 * expected + 10).all(), (task.name, counts, expected)


# ---------------------------------------------------------------------------- captions


def test_captions_mention_attributes_that_agree_with_the_columns(small):
    mentioned = dict.fromkeys(ATTRIBUTE_TASKS, 0)
    applicable = dict.fromkeys(ATTRIBUTE_TASKS, 0)
    for dataset in small.values():
        for row in dataset:
            for task in ATTRIBUTE_TASKS.values():
                value = task.names[row[task.column]]
                found = _found(task, row["caption"])
                if value == "none":
                    assert not found, (task.name, row["caption"])
                    continue
                assert found <= {value}, (task.name, value, row["caption"])
                applicable[task.name] += 1
                mentioned[task.name] += bool(found)
            assert row["caption"].endswith(".") and ".." not in row["caption"]
    # Sometimes, not always: mined tags are as incomplete as real captions'.
    for name in ("room", "distance", "loudness", "quality"):
        assert 0.2 * applicable[name] < mentioned[name] < 0.9 * applicable[name], (
            name,
            mentioned,
            applicable,
        )


def test_attribute_sentences_mention_each_task_at_its_rate_in_varied_words():
    rng = np.random.default_rng(0)
    trials = 1500
    mentioned = dict.fromkeys(ATTRIBUTE_TASKS, 0)
    used = set()
    for _ in range(trials):
        values = {t.name: t.classes[int(rng.integers(len(t.classes)))] for t in ATTRIBUTE_TASKS.values()}
        sentences = corpus._attribute_sentences(values, rng)
        assert len(sentences) <= 3
        text = " ".join(sentences)
        for task in ATTRIBUTE_TASKS.values():
            found = _found(task, text)
            assert found <= {values[task.name]}
            mentioned[task.name] += bool(found)
            used |= {p for p in task.phrases[values[task.name]] if p in text.lower()}
        assert all(s[0].isupper() and s.endswith(".") for s in sentences)
    for task in ATTRIBUTE_TASKS.values():
        assert abs(mentioned[task.name] / trials - task.mention) < 0.05, task.name
    every = {p for task in ATTRIBUTE_TASKS.values() for ps in task.phrases.values() for p in ps}
    assert used == every  # every wording is in use


# ---------------------------------------------------------------------------- renders on synthetic signals


def test_set_level_orders_loudness_classes_and_caps_the_peak():
    x = np.random.default_rng(0).standard_normal(SR).astype(np.float32)
    levels = {}
    for name, (low, high) in recording.LEVELS_DBFS.items():
        y = recording.set_level(x, (low + high) / 2)
        levels[name] = 20 * np.log10(_rms(y))
        assert levels[name] == pytest.approx((low + high) / 2, abs=0.01)
    assert levels["quiet"] + 5 < levels["moderate"] < levels["loud"] - 5
    spiky = np.zeros(SR, dtype=np.float32)
    spiky[::1000] = 1.0  # crest factor 30 dB: the peak, not the RMS, sets the gain
    assert np.max(np.abs(recording.set_level(spiky, -16.0))) == pytest.approx(10 ** (-0.5 / 20), rel=1e-4)


def test_band_limit_leaves_little_energy_outside_the_telephone_band():
    x = np.random.default_rng(0).standard_normal(4 * SR).astype(np.float32)
    y = recording.band_limit(x, SR)
    low, high = recording.TELEPHONE_BAND_HZ
    assert _band_fraction(y, high + 400) < 1e-4 and _band_fraction(y, 0, low - 100) < 1e-4
    assert _band_fraction(y, low, high) > 0.93  # the rest is in the skirts just outside the band
    # White noise keeps the in-band share of its power: about (3400 - 300) / 8000.
    assert _rms(y) ** 2 / _rms(x) ** 2 == pytest.approx((high - low) / (SR / 2), rel=0.1)


def _decay_time(x: np.ndarray, drop_db: float = 20.0) -> float:
    """Seconds for the backward-integrated energy (Schroeder) to fall by ``drop_db``."""
    energy = np.cumsum(np.square(x[::-1], dtype=np.float64))[::-1]
    curve = 10 * np.log10(energy / energy[0] + 1e-30)
    return float(np.argmax(curve < -drop_db) / SR)


def test_large_hall_decays_longer_than_small_room_and_dry():
    burst = np.zeros(3 * SR, dtype=np.float32)
    burst[: SR // 20] = np.random.default_rng(1).standard_normal(SR // 20)
    decay = {}
    for room in recording.ROOMS:
        params = recording.draw_room(room, "near", np.random.default_rng(0))
        wet = recording.place_in_room(burst, params, SR, np.random.default_rng(0))
        assert wet.shape == burst.shape and np.isfinite(wet).all()
        decay[room] = _decay_time(wet, 30.0)
        # Unit-energy response: the room does not change the burst's energy much.
        assert np.sum(wet**2) == pytest.approx(np.sum(burst**2), rel=0.2)
    assert decay["dry"] < 0.15 < decay["small room"] < 0.6 < decay["large hall"], decay


def test_far_sources_have_less_direct_sound_and_fewer_highs():
    rng = np.random.default_rng(0)
    for room, (rt60_low, _) in recording.ROOMS.items():
        ir_near = recording.room_impulse_response(rt60_low, 9.0, SR, rng)
        ir_far = recording.room_impulse_response(rt60_low, -3.0, SR, rng)
        for ir, drr in ((ir_near, 9.0), (ir_far, -3.0)):
            assert np.sum(ir**2) == pytest.approx(1.0, rel=1e-4)
            assert 10 * np.log10(ir[0] ** 2 / np.sum(ir[1:] ** 2)) == pytest.approx(drr, abs=0.01), room
    noise = rng.standard_normal(2 * SR).astype(np.float32)
    near = recording.place_in_room(noise, recording.draw_room("small room", "near", rng), SR, rng)
    far = recording.place_in_room(noise, recording.draw_room("small room", "far", rng), SR, rng)
    assert _band_fraction(far, 5000) < 0.5 * _band_fraction(near, 5000)


def test_hiss_and_clipping_are_measurable():
    rng = np.random.default_rng(0)
    tone = np.sin(2 * np.pi * 440 * np.arange(SR) / SR).astype(np.float32)
    noisy = recording.add_hiss(tone, 6.0, rng)
    assert 10 * np.log10(_rms(tone) ** 2 / _rms(noisy - tone) ** 2) == pytest.approx(6.0, abs=0.2)
    assert _band_fraction(noisy, 4000) > 0.05 > _band_fraction(tone, 4000)
    speechy = rng.standard_normal(SR).astype(np.float32)
    clipped = recording.hard_clip(speechy, 1.5)
    assert np.mean(np.abs(clipped) >= 1.5 * _rms(speechy) * 0.9999) > 0.1  # flat tops
    assert np.max(np.abs(clipped)) / _rms(clipped) < 1.8 < np.max(np.abs(speechy)) / _rms(speechy)
    for quality in recording.QUALITIES:
        assert recording.degrade(speechy, quality, SR, rng).shape == speechy.shape
    with pytest.raises(ValueError, match="unknown recording quality"):
        recording.degrade(speechy, "vinyl", SR, rng)


def _median_f0(x: np.ndarray) -> float:
    """Median autocorrelation pitch of the loudest 40 ms frames (60-500 Hz)."""
    frame = int(0.04 * SR)
    frames = x[: x.size // frame * frame].reshape(-1, frame)
    frames = frames[np.sum(frames**2, axis=1) > np.percentile(np.sum(frames**2, axis=1), 50)]
    lags = np.arange(SR // 500, SR // 60)
    estimates = []
    for f in frames:
        spectrum = np.fft.rfft(f - f.mean(), 2 * frame)
        ac = np.fft.irfft(np.abs(spectrum) ** 2)[:frame]
        estimates.append(SR / lags[np.argmax(ac[lags])])
    return float(np.median(estimates))


def test_speech_style_sets_pitch_register_rate_and_voices():
    def speak(recipe, style, seed=0):
        return synth.synthesize(recipe, np.random.default_rng(seed), SR, 10.0, style)

    for seed in range(3):
        low = speak("male_speech", SpeechStyle("low", "slow"), seed)
        high = speak("male_speech", SpeechStyle("high", "slow"), seed)
        assert _median_f0(high.waveform) > 1.3 * _median_f0(low.waveform), seed
    rates = {}
    for rate in synth.SPEAKING_RATES:
        events = [speak("female_speech", SpeechStyle("mid", rate), seed) for seed in range(4)]
        rates[rate] = np.mean([e.units / (e.waveform.size / SR) for e in events])  # syllables per second
    assert rates["slow"] < 3.2 < 4.5 < rates["fast"], rates
    one = speak("child_speech", SpeechStyle("mid", "fast", 1))
    three = speak("child_speech", SpeechStyle("mid", "fast", 3))
    assert three.units > one.units and three.waveform.size > one.waveform.size
    with pytest.raises(ValueError, match="does not take"):
        synth.synthesize("dog_bark", np.random.default_rng(0), SR, 1.0, SpeechStyle())
    with pytest.raises(ValueError, match="does not take"):
        synth.synthesize("flute", np.random.default_rng(0), SR, 1.0, SpeechStyle())
    with pytest.raises(ValueError, match="invalid speech style"):
        SpeechStyle("falsetto")


def test_music_style_sets_tempo_mode_and_rhythm():
    rng = np.random.default_rng(0)
    for bpm in (60.0, 170.0):
        score = synth._score(rng, MusicStyle(bpm, "major", "steady"), 8.0, 10.0)
        assert np.allclose(np.diff(score.onsets), 60.0 / bpm)  # a note on every beat
        assert score.accents[0] == 1.0 and score.accents[1] < 1.0  # the bar's first beat is accented
    syncopated = [synth._score(rng, MusicStyle(120.0, "minor", "syncopated"), 6.0, 10.0) for _ in range(10)]
    eighths = np.concatenate([np.round(s.onsets / 0.25) for s in syncopated]).astype(int)
    assert np.mean(eighths % 2 == 1) > 0.25  # onsets between the beats
    assert np.std(np.concatenate([np.diff(s.onsets) for s in syncopated])) > 0.1
    for mode, third, other in (("major", 4, 3), ("minor", 3, 4)):
        classes = set()
        for _ in range(10):
            score = synth._score(rng, MusicStyle(100.0, mode, "steady"), 6.0, 10.0)
            classes |= set((score.semitones % 12).tolist())
            assert score.degrees[0] == 0  # starts on the tonic
        assert third in classes and other not in classes and classes <= set(synth._MODES[mode])
    # Rendered: a fast passage packs more notes into a second than a slow one, for every instrument.
    for recipe in ("bell", "flute", "plucked_string", "chord", "mallet"):
        rates = {}
        for tempo, (low, high) in synth.TEMPI.items():
            style = MusicStyle((low + high) / 2, "major", "steady")
            event = synth.synthesize(recipe, np.random.default_rng(0), SR, 10.0, style)
            assert np.isfinite(event.waveform).all() and np.max(np.abs(event.waveform)) == pytest.approx(1.0)
            rates[tempo] = event.units / (event.waveform.size / SR)
        assert rates["slow"] < rates["medium"] < rates["fast"], (recipe, rates)


# ---------------------------------------------------------------------------- whole clips


def _clip(classes, overrides: dict, seed: int = 0):
    """A 3 s clip of ``classes`` in scene 0 with the attributes in ``overrides``; the same content
    for the same ``seed`` whatever the recording attributes."""
    plan_rng = np.random.default_rng(seed)
    attributes = corpus._draw_attributes(classes, plan_rng)
    attributes = dataclasses.replace(attributes, values={**attributes.values, **overrides})
    waveform, _ = corpus._render_clip(
        classes, 0, attributes, corpus._SNR_DB, 3.0, SR, np.random.default_rng(seed + 100)
    )
    return waveform


def test_clips_differing_in_one_attribute_share_their_content():
    classes = [EMBEDDED_ONTOLOGY.index("Dog bark"), EMBEDDED_ONTOLOGY.index("Male speech")]
    base = {"room": "small room", "distance": "near", "quality": "clean"}
    quiet = _clip(classes, {**base, "loudness": "quiet"})
    loud = _clip(classes, {**base, "loudness": "loud"})
    assert 20 * np.log10(_rms(loud) / _rms(quiet)) > 10
    assert np.corrcoef(quiet, loud)[0, 1] > 0.9999  # the same clip, at another level
    telephone = _clip(classes, {**base, "loudness": "loud", "quality": "telephone"})
    assert _band_fraction(telephone, 3800) < min(1e-3, 0.05 * _band_fraction(loud, 3800))
    clipped = _clip(classes, {**base, "loudness": "loud", "quality": "clipped"})
    assert np.max(np.abs(clipped)) / _rms(clipped) < 2.3 < np.max(np.abs(loud)) / _rms(loud)
    far = _clip(classes, {**base, "loudness": "loud", "distance": "far"})
    assert np.corrcoef(far, loud)[0, 1] < 0.99  # another rendering of the same sources
    for waveform in (quiet, loud, telephone, clipped, far):
        assert waveform.shape == (3 * SR,) and np.max(np.abs(waveform)) <= 10 ** (-0.5 / 20) + 1e-6


def test_loudness_column_matches_the_clip_level(small):
    task = ATTRIBUTE_TASKS["loudness"]
    waveforms = _waveforms(small["train"])
    levels = {name: [] for name in task.names}
    for waveform, value in zip(waveforms, small["train"][task.column], strict=True):
        levels[task.names[value]].append(20 * np.log10(_rms(waveform)))
    assert max(levels["quiet"]) < min(levels["moderate"]) and max(levels["moderate"]) < min(levels["loud"])


def test_same_seed_same_attributes_whatever_the_workers(tmp_path):
    tiny = dict(seed=5, num_train=12, num_validation=0, num_test=0, num_heldout=6, clip_seconds=1.0)
    first = load_embedded_corpus(**tiny, cache_dir=tmp_path / "a")
    again = load_embedded_corpus(**tiny, cache_dir=tmp_path / "b", num_proc=2)
    other = load_embedded_corpus(**{**tiny, "seed": 6}, cache_dir=tmp_path / "c")
    for split in ("train", "heldout"):
        for column in (*ATTRIBUTE_TASKS, "caption"):
            assert first[split][column] == again[split][column], (split, column)
    assert [first["train"][t] for t in ATTRIBUTE_TASKS] != [other["train"][t] for t in ATTRIBUTE_TASKS]
