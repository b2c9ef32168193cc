"""The Gradio Space (spaces/audio-tagger): the handler called directly, and the app served on 127.0.0.1 and
called through gradio_client. The model is a randomly initialised tiny AudioMAE tagger saved to tmp_path:
the tests check what the app does with a checkpoint, not what the checkpoint knows."""

import importlib.util
import os
import socket
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from tagger_utils import save_tiny_tagger, write_clip
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

from hf_audiorep.data.decode import decode_audio
from hf_audiorep.inference import log_mel_spectrogram, model_window_seconds, tag_waveform

SPACE = Path(__file__).resolve().parents[2] / "spaces" / "audio-tagger"


def load_app():
    """Import spaces/audio-tagger/app.py (a script folder, not a package) as a module."""
    spec = importlib.util.spec_from_file_location("audio_tagger_app", SPACE / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app():
    return load_app()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_tagger(tmp_path_factory.mktemp("space") / "tiny-tagger")


@pytest.fixture(scope="module")
def settings(app, model_dir):
    # float32: these tests compare the Space's scores with the library's to 1e-6 (the default, bf16 on an
    # AMX CPU, is tested in test_precision.py)
    return app.TaggerSettings(
        model_ids=(str(model_dir),), max_seconds=5.0, max_megabytes=1.0, precision="fp32"
    )


def _reference_top(model_dir: Path, waveform: np.ndarray, k: int) -> dict[str, float]:
    model = AutoModelForAudioClassification.from_pretrained(model_dir).eval()
    fe = AutoFeatureExtractor.from_pretrained(model_dir)
    return dict(tag_waveform(model, fe, waveform, 16000).top(k))


# ----------------------------------------------------------------------------------- handler directly


def test_predict_tags_a_short_wav_like_the_library(app, settings, model_dir, tmp_path):
    clip = write_clip(tmp_path / "short.wav", 1.5)
    labels, figure, message = app.predict(str(clip), None, 3, settings=settings)
    expected = _reference_top(model_dir, decode_audio(str(clip), 16000), 3)
    assert list(labels) == list(expected)  # same labels, best first
    assert list(labels.values()) == pytest.approx(list(expected.values()), abs=1e-6)
    assert all(0.0 < score < 1.0 for score in labels.values())
    assert isinstance(figure, Image.Image) and figure.width == 960
    assert "Tagged 1.5 s" in message and "one pass" in message and "⚠️" not in message


def test_long_stereo_44k_clip_is_resampled_windowed_and_cut(app, settings, model_dir, tmp_path):
    clip = tmp_path / "long.flac"
    write_clip(clip, 7.0, sample_rate=44100, channels=2, seed=1)
    labels, figure, message = app.predict(str(clip), str(model_dir), 4, settings=settings)
    # The app hears the first max_seconds (5 s) of the down-mixed clip at the model's 16 kHz.
    expected = _reference_top(model_dir, decode_audio(str(clip), 16000)[: 5 * 16000], 4)
    assert list(labels) == list(expected)
    assert list(labels.values()) == pytest.approx(list(expected.values()), abs=1e-6)
    assert "only its first 5 s" in message and "7.0 s" in message
    # The model's window (2.08 s and a frame's remainder), as tag_waveform slides it.
    model = AutoModelForAudioClassification.from_pretrained(model_dir)
    window = model_window_seconds(AutoFeatureExtractor.from_pretrained(model_dir), model.config)
    assert f"overlapping windows of {window:.2f} s" in message
    short_figure = app.predict(str(write_clip(tmp_path / "s.wav", 1.0)), None, 4, settings=settings)[1]
    # Longer than the window: a second panel plots each label's score over time.
    assert figure.height > short_figure.height + 150


def test_silent_clip_is_tagged_with_a_notice(app, settings, tmp_path):
    clip = tmp_path / "silent.wav"
    sf.write(clip, np.zeros(16000, dtype=np.float32), 16000)
    labels, figure, message = app.predict(str(clip), None, 2, settings=settings)
    assert len(labels) == 2 and figure is not None
    assert "silent" in message and "-inf dBFS" in message


@pytest.mark.parametrize(
    "case, expected",
    [
        ("none", "Upload or record a clip first"),
        ("empty", "empty (0 bytes)"),
        ("not_audio", "could not be read as audio"),
        ("too_large", "accepts files up to 1 MB"),
        ("too_short", "upload at least 0.1 s"),
        ("missing", "could not be found"),
        ("wrong_type", "Expected an audio file, got int"),
    ],
)
def test_bad_uploads_get_a_readable_message(app, settings, tmp_path, case, expected):
    paths = {
        "none": None,
        "empty": tmp_path / "empty.wav",
        "not_audio": tmp_path / "notes.wav",
        "too_large": tmp_path / "big.wav",
        "too_short": tmp_path / "blip.wav",
        "missing": tmp_path / "gone.wav",
        "wrong_type": 42,
    }
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "notes.wav").write_text("this is a text file, not audio\n" * 20)
    write_clip(tmp_path / "big.wav", 40.0)  # 1.28 MB of 16-bit samples
    write_clip(tmp_path / "blip.wav", 0.05)
    value = paths[case]
    labels, figure, message = app.predict(str(value) if isinstance(value, Path) else value, None, 3, settings)
    assert labels is None and figure is None
    assert expected in message
    assert str(tmp_path) not in message  # server paths are not shown to users


def test_model_choice_is_limited_to_the_configured_checkpoints(app, settings, tmp_path):
    clip = str(write_clip(tmp_path / "a.wav", 1.0))
    labels, _, message = app.predict(clip, "someone/any-repo", 3, settings=settings)
    assert labels is None and "Unknown model `someone/any-repo`" in message
    labels, _, message = app.predict(clip, None, "many", settings=settings)
    assert labels is None and "whole number" in message
    assert len(app.predict(clip, None, 500, settings=settings)[0]) == app.MAX_TOP_K


def test_unloadable_model_is_reported_not_raised(app, tmp_path):
    broken = tmp_path / "not-a-model"
    broken.mkdir()
    settings = app.TaggerSettings(model_ids=(str(broken),))
    labels, _, message = app.predict(str(write_clip(tmp_path / "a.wav", 1.0)), None, 3, settings=settings)
    assert labels is None and f"`{broken}` could not be loaded" in message


def test_without_a_model_the_app_says_what_to_set(app, monkeypatch, tmp_path):
    for name in ("HF_AUDIOREP_MODEL", "HF_AUDIOREP_MODELS"):
        monkeypatch.delenv(name, raising=False)
    labels, figure, message = app.predict(str(write_clip(tmp_path / "a.wav", 1.0)))
    assert (labels, figure, message) == (None, None, app.NO_MODEL_MESSAGE)
    assert "HF_AUDIOREP_MODEL" in message and "--model" in message
    demo = app.build_demo()  # trains nothing, fetches nothing, and shows the message on the page
    texts = [c.get("props", {}).get("value") for c in demo.config["components"]]
    assert any(isinstance(t, str) and app.NO_MODEL_MESSAGE in t for t in texts)


def test_model_ids_come_from_arguments_then_environment(app):
    assert app.configured_model_ids(["a/x", " b ", "a/x"], {"HF_AUDIOREP_MODEL": "c"}) == ["a/x", "b"]
    assert app.configured_model_ids(None, {"HF_AUDIOREP_MODELS": "a, b,,", "HF_AUDIOREP_MODEL": "c"}) == [
        "a",
        "b",
    ]
    assert app.configured_model_ids(None, {"HF_AUDIOREP_MODEL": "./dir"}) == ["./dir"]
    assert app.configured_model_ids(None, {}) == []
    env = {"HF_AUDIOREP_MODEL": "m", "HF_AUDIOREP_MAX_SECONDS": "12", "HF_AUDIOREP_MAX_MEGABYTES": "3.5"}
    assert app.TaggerSettings.from_env(env) == app.TaggerSettings(("m",), 12.0, 3.5)
    # Every bad value names its variable, as the start command's usage error does (one parser for both).
    for variable, text, problem in (
        ("HF_AUDIOREP_MAX_SECONDS", "ten", "expected a number, got 'ten'"),
        ("HF_AUDIOREP_MAX_SECONDS", "0.5", "max_seconds must be a finite number >= 1"),
        ("HF_AUDIOREP_MAX_MEGABYTES", "-2", "max_megabytes must be a positive number"),
        ("HF_AUDIOREP_PRECISION", "fp8", "precision must be one of"),
    ):
        with pytest.raises(ValueError, match=f"^environment variable {variable}: {problem}"):
            app.TaggerSettings.from_env({variable: text})
    with pytest.raises(ValueError, match="max_seconds"):
        app.TaggerSettings(max_seconds=0.0)
    with pytest.raises(ValueError, match="max_megabytes"):
        app.TaggerSettings(max_megabytes=float("nan"))
    with pytest.raises(TypeError, match="not a single string"):
        app.TaggerSettings(model_ids="org/model")


def test_a_missing_model_directory_reads_as_on_the_command_line(app, tmp_path):
    absent = tmp_path / "absent"
    settings = app.TaggerSettings(model_ids=(str(absent),))
    labels, _, message = app.predict(str(write_clip(tmp_path / "a.wav", 1.0)), None, 3, settings=settings)
    assert labels is None and f"no such model directory: {absent}" in message  # hf-audiorep tag's words
    assert "Repo id" not in message


def test_a_model_that_cannot_take_the_clip_is_a_message_not_an_exception(
    app, settings, tmp_path, monkeypatch
):
    def refuse(*args, **kwargs):
        raise ValueError("input_values has 300 frames, more than config.max_length=200")

    monkeypatch.setattr(app, "tag_waveform", refuse)
    labels, figure, message = app.predict(
        str(write_clip(tmp_path / "a.wav", 1.0)), None, 3, settings=settings
    )
    assert labels is None and figure is None
    assert message == (
        f"The model `{settings.model_ids[0]}` could not tag this clip: input_values has 300 frames, more "
        "than config.max_length=200"
    )


_LIMIT_VARIABLES = ("HF_AUDIOREP_MAX_SECONDS", "HF_AUDIOREP_MAX_MEGABYTES", "HF_AUDIOREP_PRECISION")


@pytest.mark.parametrize(
    ("environ", "argv", "expected"),
    [
        (
            {"HF_AUDIOREP_MAX_SECONDS": "abc"},
            [],
            "environment variable HF_AUDIOREP_MAX_SECONDS: expected a number, got 'abc'",
        ),
        ({}, ["--max_seconds", "0"], "argument --max_seconds: max_seconds must be a finite number >= 1"),
        ({}, ["--max_megabytes", "nan"], "argument --max_megabytes: max_megabytes must be a positive number"),
        (
            {"HF_AUDIOREP_MAX_MEGABYTES": "-1"},
            [],
            "environment variable HF_AUDIOREP_MAX_MEGABYTES: max_megabytes must be a positive number",
        ),
        (
            {"HF_AUDIOREP_PRECISION": "fp8"},
            [],
            "environment variable HF_AUDIOREP_PRECISION: precision must be one of",
        ),
    ],
)
def test_bad_limits_at_start_up_are_usage_errors(
    app, model_dir, monkeypatch, capsys, environ, argv, expected
):
    for name in _LIMIT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(app, "build_demo", lambda *a, **k: pytest.fail("a bad setting must stop start-up"))
    with pytest.raises(SystemExit) as exit_:
        app.main(["--model", str(model_dir), *argv])
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert ": error: " in last and expected in last, last


def test_limits_come_from_arguments_then_environment(app, model_dir, monkeypatch):
    started = {}

    class Demo:
        def launch(self, **kwargs):
            started["launch"] = kwargs

    def build_demo(model_ids, max_seconds, max_megabytes, examples, precision):
        started["settings"] = (max_seconds, max_megabytes, precision)
        return Demo()

    monkeypatch.setattr(app, "build_demo", build_demo)
    # main() switches autograd off for the server's process; here the process goes on to train models.
    monkeypatch.setattr(app.torch, "set_grad_enabled", lambda mode: None)
    for name in _LIMIT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    app.main(["--model", str(model_dir)])
    assert started["settings"] == (app.DEFAULT_MAX_SECONDS, app.DEFAULT_MAX_MEGABYTES, "auto")
    monkeypatch.setenv("HF_AUDIOREP_MAX_SECONDS", "12")
    monkeypatch.setenv("HF_AUDIOREP_MAX_MEGABYTES", "3.5")
    monkeypatch.setenv("HF_AUDIOREP_PRECISION", "fp32")
    app.main(["--model", str(model_dir)])
    assert started["settings"] == (12.0, 3.5, "fp32") and started["launch"]["max_file_size"] == 3_500_000
    app.main(["--model", str(model_dir), "--max_seconds", "7", "--precision", "bf16"])
    assert started["settings"] == (7.0, 3.5, "bf16")


# ------------------------------------------------------------------------------- pieces of the picture


def test_log_mel_spectrogram_is_the_model_input_before_normalisation(model_dir):
    fe = AutoFeatureExtractor.from_pretrained(model_dir)
    wave = np.random.default_rng(0).normal(scale=0.1, size=16000).astype(np.float32)
    log_mel = log_mel_spectrogram(fe, wave)
    assert log_mel.shape == (98, 128)  # 1 + (16000 - 400) // 160 frames, snip_edges
    model_input = fe(wave, sampling_rate=16000, return_tensors="np")["input_values"][0, :98]
    np.testing.assert_allclose((log_mel - fe.mean) / (fe.std * fe.std_scale), model_input, atol=1e-5)
    with pytest.raises(ValueError, match="shorter than one 25-ms"):
        log_mel_spectrogram(fe, wave[:100])
    with pytest.raises(ValueError, match="mono 1-D"):
        log_mel_spectrogram(fe, np.stack([wave, wave]))


def test_render_figure_panels_and_input_checks():
    sys.path.insert(0, str(SPACE))
    try:
        from figures import render_figure
    finally:
        sys.path.remove(str(SPACE))
    log_mel = np.random.default_rng(0).normal(size=(300, 128)).astype(np.float32)
    alone = render_figure(log_mel, 3.0)
    scores = {"Dog bark": np.array([0.1, 0.9, 0.2]), "Rain": np.array([0.5, 0.5, 0.6])}
    both = render_figure(log_mel, 3.0, scores, np.array([0.5, 1.5, 2.5]))
    assert alone.width == both.width == 960 and both.height > alone.height + 150
    pixels = np.asarray(both)
    # The dog-bark line (first colour) peaks in the middle window: drawn highest at x of 1.5 s.
    blue = np.argwhere(np.all(pixels == (31, 119, 180), axis=-1))
    assert blue[:, 0].min() < np.median(blue[:, 0])
    assert np.asarray(render_figure(np.zeros((50, 128)), 0.5)).std() > 0  # axes drawn even on silence
    with pytest.raises(ValueError, match="3 scores for 2 windows"):
        render_figure(log_mel, 3.0, scores, np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="at least one frame"):
        render_figure(np.zeros((0, 128)), 1.0)


def test_example_clips_are_synthesised_once(tmp_path):
    sys.path.insert(0, str(SPACE))
    try:
        from example_clips import EXAMPLES, write_examples
    finally:
        sys.path.remove(str(SPACE))
    paths = write_examples(tmp_path)
    assert [p.name for p in paths] == [clip.file_name for clip in EXAMPLES]
    for path, clip in zip(paths, EXAMPLES, strict=True):
        info = sf.info(path)
        assert (info.samplerate, info.channels) == (clip.sample_rate, clip.channels)
        assert info.duration == pytest.approx(clip.seconds)
        assert np.abs(sf.read(path)[0]).max() > 0.5  # normalised to -3 dBFS, not silence
    assert max(clip.seconds for clip in EXAMPLES) > 10.24  # one example needs sliding windows
    stamps = [p.stat().st_mtime_ns for p in paths]
    assert [p.stat().st_mtime_ns for p in write_examples(tmp_path)] == stamps


# --------------------------------------------------------------------------- served, via gradio_client


def test_served_app_answers_gradio_client_and_survives_bad_uploads(app, model_dir, tmp_path, monkeypatch):
    from gradio_client import Client, handle_file

    monkeypatch.setenv("HF_AUDIOREP_EXAMPLES_DIR", str(tmp_path / "examples"))
    demo = app.build_demo([str(model_dir)], max_seconds=5.0, max_megabytes=1.0, precision="fp32")
    assert len(list((tmp_path / "examples").iterdir())) == 4  # the examples were built for the page
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(
            f"http://127.0.0.1:{port}/", verbose=False, analytics_enabled=False, download_files=str(tmp_path)
        )
        bad = tmp_path / "bad.wav"
        bad.write_bytes(b"RIFF....WAVEfmt garbage that is not a wave file")

        def tag(path):
            return client.predict(handle_file(str(path)), str(model_dir), 3, api_name="/predict")

        labels, figure, message = tag(bad)
        assert "could not be read as audio" in message and figure is None
        assert not (labels or {}).get("confidences")

        clip = write_clip(tmp_path / "good.wav", 3.0, seed=2)
        labels, figure, message = tag(clip)
        expected = _reference_top(model_dir, decode_audio(str(clip), 16000), 3)
        assert labels["label"] == next(iter(expected))
        got = {c["label"]: c["confidence"] for c in labels["confidences"]}
        assert got == pytest.approx(expected, abs=1e-6)
        assert Path(figure).is_file() and Image.open(figure).width == 960
        assert "Tagged 3.0 s" in message
    finally:
        demo.close()


# ------------------------------------------------------------------------------------- Space metadata


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def test_space_front_matter_and_requirements_match_the_ci_pins():
    import yaml

    text = (SPACE / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    ci = _pins(SPACE.parents[1] / "requirements-ci.txt")
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == ci["gradio"]
    assert (SPACE / meta["app_file"]).is_file() and meta["models"]
    space = _pins(SPACE / "requirements.txt")
    assert "gradio" not in space  # the Space installs sdk_version itself; a second pin could disagree
    assert space and all(ci[name] == version for name, version in space.items())
    assert "hf_audiorep" in (SPACE / "requirements.txt").read_text().split()
    assert "ffmpeg" in (SPACE / "packages.txt").read_text().split()


# ------------------------------------------------------------------------ started the documented way


def test_the_documented_start_command_serves_the_app(model_dir, tmp_path):
    """`python spaces/audio-tagger/app.py --model DIR` (README), as a process, answering a real client."""
    import subprocess
    import time

    from gradio_client import Client, handle_file

    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    env["HF_AUDIOREP_EXAMPLES_DIR"] = str(tmp_path / "examples")
    command = [sys.executable, str(SPACE / "app.py"), "--model", str(model_dir)]
    command += ["--server_name", "127.0.0.1", "--server_port", str(port), "--max_megabytes", "2.5"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert server.poll() is None, f"the app exited:\n{server.stdout.read()}"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        else:
            pytest.fail("the app did not start listening within 120 s")
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path))
        clip = write_clip(tmp_path / "clip.wav", 3.0, seed=2)
        labels, _, message = client.predict(handle_file(str(clip)), str(model_dir), 3, api_name="/predict")
        assert len(labels["confidences"]) == 3 and "Tagged 3.0 s" in message
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_bad_setting_at_start_up_is_one_line(model_dir):
    """`HF_AUDIOREP_MAX_SECONDS=abc python app.py --model DIR`, as a process: a usage error, no traceback."""
    import subprocess

    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    env["HF_AUDIOREP_MAX_SECONDS"] = "abc"
    command = [sys.executable, str(SPACE / "app.py"), "--model", str(model_dir)]
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert "HF_AUDIOREP_MAX_SECONDS: expected a number, got 'abc'" in run.stderr


def test_the_top_label_is_not_a_headline(app, model_dir):
    demo = app.build_demo([str(model_dir)], examples=False)
    label = next(c for c in demo.config["components"] if c.get("props", {}).get("elem_id") == "labels")
    assert label["props"]["show_heading"] is False


def test_the_spectrogram_picture_uses_the_models_own_front_end():
    """A log-mel (CP-Mobile) extractor is drawn with its own front end, not a Kaldi fbank."""
    from hf_audiorep.modeling import LogMelFeatureExtractor

    fe = LogMelFeatureExtractor()
    wave = np.random.default_rng(0).normal(scale=0.1, size=fe.sampling_rate).astype(np.float32)
    picture = log_mel_spectrogram(fe, wave)
    assert picture.shape == (fe.num_frames(len(wave)), fe.feature_size)
    raw = fe(wave, sampling_rate=fe.sampling_rate, return_tensors="np")["input_values"][0, : picture.shape[0]]
    np.testing.assert_allclose(picture, raw, atol=1e-5)  # this front end is not normalised
