"""The Hub unreachable (offline mode, a refused connection, a failing stream): one clear line, promptly.

Nothing here touches the network: offline mode, or ``HF_ENDPOINT`` on a closed loopback port.
"""

import dataclasses
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from unittest.mock import MagicMock, patch

import datasets
import httpx2
import pytest
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

import hf_audiorep
from hf_audiorep import hub_errors
from hf_audiorep.data.sources import load_audio_source
from hf_audiorep.data.stream import AudioStream
from hf_audiorep.hub import push_run
from hf_audiorep.hub_errors import HubUnreachableError, hub_error_message, run_recipe
from hf_audiorep.modeling import AudioFbankFeatureExtractor
from hf_audiorep.training import TrainingArguments

ROOT = Path(__file__).resolve().parents[2]
REPO = "someone/offline-test"
DATASET = "agkphysics/AudioSet"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import AutoModelForAudioClassification

    out = tmp_path_factory.mktemp("offline") / "model"
    config = hf_audiorep.config_from_preset("audiomae-tiny", num_labels=3, max_length=208)
    AutoModelForAudioClassification.from_config(config).save_pretrained(out)
    AudioFbankFeatureExtractor(target_length=208).save_pretrained(out)
    return out


def _closed_port() -> int:
    # A port that was just free on loopback: connecting to it is refused at once.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(tmp_path, offline: bool, **extra) -> dict:
    flag = "1" if offline else "0"
    return {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_OFFLINE": flag,
        "HF_DATASETS_OFFLINE": flag,
        "HF_TOKEN": "hf_fake_token_for_tests",
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def _run(command, env, timeout) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - start


def _push(model_dir, env, timeout=120):
    return _run([sys.executable, "-m", "hf_audiorep.cli", "push", str(model_dir), REPO], env, timeout)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def test_cli_push_offline_prints_one_line(model_dir, tmp_path):
    proc, _ = _push(model_dir, _env(tmp_path, offline=True))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("hf-audiorep push: error:")
    assert REPO in lines[0] and "HF_HUB_OFFLINE" in lines[0] and "token" in lines[0]
    assert proc.stdout == ""


def test_cli_push_to_a_refused_endpoint_prints_one_line_promptly(model_dir, tmp_path):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    proc, seconds = _push(model_dir, _env(tmp_path, offline=False, HF_ENDPOINT=endpoint))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert REPO in lines[0] and endpoint in lines[0] and "network" in lines[0]
    assert seconds < 60, f"took {seconds:.0f} s"


def test_hub_dataset_on_a_refused_endpoint_fails_at_once(tmp_path):
    """No retries for a Hub that refuses connections: datasets alone retries for about 20 s per file."""
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    code = (
        "import time\n"
        "from hf_audiorep.data.sources import load_audio_source\n"
        "from hf_audiorep.hub_errors import HubUnreachableError\n"
        "start = time.monotonic()\n"
        "try:\n"
        f"    load_audio_source({DATASET!r}, streaming=True)\n"
        "except HubUnreachableError as err:\n"
        "    print(f'{time.monotonic() - start:.2f}'); print(err)\n"
    )
    proc, _ = _run([sys.executable, "-c", code], _env(tmp_path, offline=False, HF_ENDPOINT=endpoint), 180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seconds, message = proc.stdout.strip().splitlines()[-2:]
    assert float(seconds) < 5, f"the load took {seconds} s to fail"
    assert DATASET in message and endpoint in message and "--dataset PATH" in message


def test_finetune_on_two_processes_offline_reports_once_and_returns(tmp_path):
    """`accelerate launch` with 2 CPU processes on a Hub dataset in offline mode: one line from rank 0,
    no traceback from the recipe, a non-zero status, and the launcher returns."""
    command = [
        str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", "0", str(ROOT / "recipes" / "finetune.py"), "--cpu", "true",
        "--dataset", DATASET, "--dataset_config", "balanced", "--streaming", "true",
        "--output_dir", str(tmp_path / "run"),
    ]  # fmt: skip
    env = _env(tmp_path, offline=True, ACCELERATE_USE_CPU="true")
    proc, seconds = _run(command, env, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    reports = [line for line in output.splitlines() if "finetune.py" in line and "error:" in line]
    assert len(reports) == 1, output[-5000:]
    assert DATASET in reports[0] and "HF_HUB_OFFLINE" in reports[0] and "--dataset PATH" in reports[0]
    # The launcher adds its own summary of the failed ranks; the recipe's processes print no traceback.
    assert "[rank0]" not in output and "[rank1]" not in output, output[-5000:]
    assert 'recipes/finetune.py", line' not in output
    assert "Retrying" not in output
    assert seconds < 120


def test_a_stream_that_cannot_open_its_files_says_so(monkeypatch):
    """A stream opens its remote files at the first batch; a connection failure there reads as one line."""

    def records():
        cause = httpx2.ConnectError("[Errno -2] Name or service not known")
        url = f"hf://datasets/{DATASET}@0123abcd/data/bal_train/00.parquet"
        raise ConnectionError(f"Server Disconnected while reading {url}") from cause
        yield  # a generator

    features = datasets.Features({"audio": datasets.Audio(), "labels": datasets.Value("string")})
    dataset = datasets.IterableDataset.from_generator(records, features=features)
    source = load_audio_source(dataset, label_names=["a", "b"])
    monkeypatch.setattr(hub_errors, "_offline", lambda: False)
    stream = AudioStream(source, batch_size=2, clip_seconds=1.0, train=False, num_decode_threads=0)
    with pytest.raises(HubUnreachableError) as raised:
        next(iter(stream))
    message = str(raised.value)
    assert "\n" not in message and DATASET in message and "network" in message
    assert isinstance(raised.value.__cause__, ConnectionError)


@pytest.mark.parametrize(
    "error, offline, expected",
    [
        (OfflineModeIsEnabled("offline"), True, ["offline mode", "HF_HUB_OFFLINE", "--dataset PATH"]),
        (httpx2.ConnectError("refused"), False, ["network", "HF_HUB_OFFLINE=1", "--dataset PATH"]),
        (datasets.exceptions.DatasetNotFoundError("no such dataset"), False, ["has no dataset", "token"]),
    ],
)
def test_hub_error_messages_name_the_repo_and_what_to_check(monkeypatch, error, offline, expected):
    monkeypatch.setattr(hub_errors, "_offline", lambda: offline)
    message = hub_error_message(error, DATASET)
    assert DATASET in message and "\n" not in message
    for part in expected:
        assert part in message
    assert hub_error_message(ValueError("a bad column"), DATASET) is None


def test_a_refused_upload_points_at_the_token(monkeypatch):
    monkeypatch.setattr(hub_errors, "_offline", lambda: False)
    response = httpx2.Response(401, request=httpx2.Request("POST", "https://huggingface.co/api/repos/create"))
    message = hub_error_message(
        HfHubHTTPError("401 Unauthorized", response=response), REPO, repo_type="model", upload=True
    )
    assert REPO in message and "HTTP 401" in message and "write access" in message and "HF_TOKEN" in message


def test_push_run_failure_says_where_the_run_is_saved(model_dir):
    api = MagicMock()
    api.create_repo.side_effect = OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode")
    args = TrainingArguments(output_dir=str(model_dir), push_to_hub=True, hub_model_id=REPO)
    with patch("hf_audiorep.hub.HfApi", return_value=api), pytest.raises(HubUnreachableError) as raised:
        push_run(args)
    message = str(raised.value)
    assert REPO in message and "HF_HUB_OFFLINE" in message
    assert f"hf-audiorep push {model_dir} {REPO}" in message


def _unreachable():
    raise HubUnreachableError("cannot reach the Hub for dataset x/y", "x/y")


def test_run_recipe_prints_one_line_and_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["recipes/finetune.py"])
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(SystemExit) as raised:
        run_recipe(_unreachable)
    assert raised.value.code == 2
    assert capsys.readouterr().err == "finetune.py: error: cannot reach the Hub for dataset x/y\n"


def test_run_recipe_on_another_rank_leaves_the_report_to_rank_0(monkeypatch, capsys):
    waited = []
    monkeypatch.setattr(sys, "argv", ["recipes/finetune.py"])
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(hub_errors.time, "sleep", waited.append)
    with pytest.raises(SystemExit) as raised:
        run_recipe(_unreachable)
    # The launcher stops this rank during the wait when rank 0 has reported; past it, the rank reports.
    assert raised.value.code == 2 and waited == [hub_errors._OTHER_RANKS_GRACE_SECONDS]
    assert capsys.readouterr().err.startswith("finetune.py (rank 1): error: ")


def test_start_processes_returns_only_once_every_process_has_joined(monkeypatch):
    """Rank 0 may exit on an unusable Hub right after the process group starts; the wait keeps it from
    leaving while another rank is still connecting to it (that rank's gloo traceback, seen under load)."""
    import accelerate

    calls = []

    class State:
        def __init__(self, cpu):
            calls.append(("start", cpu))

        def wait_for_everyone(self):
            calls.append("wait")

    monkeypatch.setattr(accelerate, "PartialState", State)
    state = hub_errors.start_processes(cpu=True)
    assert isinstance(state, State) and calls == [("start", True), "wait"]


def test_every_recipe_starts_its_processes_through_start_processes():
    sources = [ROOT / "hf_audiorep" / "bootstrap_recipe.py", *sorted((ROOT / "recipes").glob("*.py"))]
    starting = [path for path in sources if "start_processes(cpu=" in path.read_text()]
    direct = [path.name for path in sources if "PartialState(cpu=" in path.read_text()]
    assert len(starting) == 6 and direct == []


def test_a_model_option_names_what_it_does_not_find(tmp_path, monkeypatch):
    import huggingface_hub

    from hf_audiorep.hub_errors import check_model_source

    check_model_source(None, "--model_name_or_path")  # not given: a fresh model
    check_model_source(str(tmp_path), "--teacher")
    for missing in (tmp_path / "absent", "./absent", "a/b/c"):
        with pytest.raises(FileNotFoundError, match=rf"^--teacher {missing}: no such model directory$"):
            check_model_source(str(missing), "--teacher")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        check_model_source(str(tmp_path / "file"), "--teacher")
    # A repo id: offline it can only come from the cache.
    monkeypatch.setattr(hub_errors, "_offline", lambda: True)
    with pytest.raises(
        HubUnreachableError, match="--rr_teacher org/absent: no such model directory here, and"
    ):
        check_model_source("org/absent", "--rr_teacher")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: f"/cache/{repo}/{name}")
    check_model_source("org/cached", "--rr_teacher")


@pytest.mark.parametrize(
    "recipe, option",
    [
        ("finetune", "model_name_or_path"),
        ("distill", "teacher"),
        ("pretrain_audiomae", "model_name_or_path"),
        ("pretrain_uts", "model_name_or_path"),
        ("pretrain_bat", "model_name_or_path"),
        ("pretrain_cat", "rr_teacher"),
        ("probe", "model_name_or_path"),
    ],
)
def test_every_recipe_checks_its_model_options_when_parsed(recipe, option, tmp_path):
    # A missing folder once failed after the data was loaded, with transformers' words on repo id syntax.
    from recipe_utils import load_recipe
    from transformers import HfArgumentParser

    from hf_audiorep import bootstrap_recipe

    # The bootstrap recipes (CAT, BAT) take their RR options from the module they share.
    namespace = {**vars(bootstrap_recipe), **vars(load_recipe(recipe))}
    classes = [c for c in namespace.values() if dataclasses.is_dataclass(c) and isinstance(c, type)]
    owner = next(c for c in classes if option in {f.name for f in dataclasses.fields(c)})
    with pytest.raises(FileNotFoundError, match=f"--{option} {tmp_path / 'absent'}: no such model directory"):
        HfArgumentParser(owner).parse_args_into_dataclasses([f"--{option}", str(tmp_path / "absent")])


def test_an_output_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"--output_dir .*file is a file: give a directory"):
        TrainingArguments(output_dir=str(tmp_path / "file"))
