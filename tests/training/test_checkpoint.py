"""The checkpoint primitives directly: atomic JSON and directory publishing (what a reader can see at every
rename, and recovery from a crash between the renames), extra state (safetensors + JSON), and
``trainer_state.json`` written by ``save_checkpoint`` and read back by ``load_checkpoint``.

``tests/training/test_training.py`` drives the same code through ``TrainLoop``; these tests reach each
function on its own, in milliseconds, so that mutation testing can afford them for every mutant."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from toy_training import fresh_accelerate_state  # noqa: F401  (autouse: resets accelerate's state)

from hf_audiorep.training import checkpoint as ckpt
from hf_audiorep.training import find_latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint

# --------------------------------------------------------------------------------------------- atomic JSON


class _Opaque:
    """Neither JSON nor a scalar with ``.item()``: kept as its text."""

    def __str__(self):
        return "opaque-thing"


class _ItemAttribute:
    """Has an ``item`` attribute that is not a method: kept as its text, never called."""

    item = 3

    def __str__(self):
        return "not-a-scalar"


def test_json_scalar_turns_numpy_and_torch_scalars_into_numbers_and_anything_else_into_text():
    assert ckpt._json_scalar(np.float32(0.25)) == 0.25 and type(ckpt._json_scalar(np.float32(0.25))) is float
    assert ckpt._json_scalar(np.int64(7)) == 7 and type(ckpt._json_scalar(np.int64(7))) is int
    assert ckpt._json_scalar(torch.tensor(1.5)) == 1.5
    assert ckpt._json_scalar(np.bool_(True)) is True
    assert ckpt._json_scalar(_Opaque()) == "opaque-thing"
    assert ckpt._json_scalar(_ItemAttribute()) == "not-a-scalar"
    assert ckpt._json_scalar(Path("a/b")) == str(Path("a/b"))


def test_write_json_atomic_writes_readable_indented_json_and_replaces_the_old_file(tmp_path):
    path = tmp_path / "eval_results.json"
    path.write_text('{"old": true}')
    payload = {"test_mAP": 0.5, "classes": ["dog", "cat"], "nested": {"n": 3}}
    ckpt.write_json_atomic(path, payload)
    assert json.loads(path.read_text()) == payload
    # Indented by 2, like every JSON file the library writes for people to read and diff.
    assert path.read_text() == json.dumps(payload, indent=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval_results.json"]  # no .tmp- file left


def test_write_json_atomic_passes_default_for_numpy_values(tmp_path):
    path = tmp_path / "results.json"
    ckpt.write_json_atomic(str(path), {"mAP": np.float32(0.75), "n": np.int64(3)}, default=ckpt._json_scalar)
    assert json.loads(path.read_text()) == {"mAP": 0.75, "n": 3}
    with pytest.raises(TypeError):  # without a default, json cannot write numpy scalars
        ckpt.write_json_atomic(tmp_path / "other.json", {"mAP": np.float32(0.75)})


def test_write_json_atomic_renames_a_complete_sibling_then_syncs_the_directory(tmp_path, monkeypatch):
    """The payload is complete in a ``.tmp-`` file beside the target before the one rename that makes it
    visible; until then the target keeps its old content; the directory is synced after the rename."""
    path = tmp_path / "eval_results.json"
    path.write_text('{"old": true}')
    payload = {"test_mAP": 0.5}
    events, real_replace, real_fsync_dir = [], os.replace, ckpt._fsync_dir

    def recording_replace(src, dst):
        src, dst = Path(src), Path(dst)
        assert json.loads(src.read_text()) == payload  # complete before it is renamed
        assert json.loads(dst.read_text()) == {"old": True}  # readers still see the old file
        events.append(("replace", src.parent, src.name.startswith(ckpt.TMP_PREFIX), dst))
        real_replace(src, dst)

    def recording_fsync_dir(directory):
        events.append(("fsync_dir", Path(directory)))
        real_fsync_dir(directory)

    monkeypatch.setattr(ckpt.os, "replace", recording_replace)
    monkeypatch.setattr(ckpt, "_fsync_dir", recording_fsync_dir)
    ckpt.write_json_atomic(path, payload)
    assert events == [("replace", tmp_path, True, path), ("fsync_dir", tmp_path)]
    assert json.loads(path.read_text()) == payload


def test_write_json_atomic_that_fails_leaves_the_old_file_intact(tmp_path):
    path = tmp_path / "eval_results.json"
    path.write_text('{"old": true}')

    def refuse(value):
        raise TypeError("cannot serialise")

    with pytest.raises(TypeError, match="cannot serialise"):
        ckpt.write_json_atomic(path, {"a": 1, "b": _Opaque()}, default=refuse)
    assert json.loads(path.read_text()) == {"old": True}


# ------------------------------------------------------------------------------------ publishing a directory


def _staged(root: Path, name: str, files: dict[str, str]) -> Path:
    staged = ckpt.staging_dir(root, name)
    for file, text in files.items():
        (staged / file).write_text(text)
    return staged


def _contents(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(directory.iterdir())}


OLD = {"trainer_state.json": '{"v": "old"}', "model.safetensors": "old weights", "only_old.bin": "x"}
NEW = {"trainer_state.json": '{"v": "new"}', "model.safetensors": "new weights"}
NEWER = {"trainer_state.json": '{"v": "newer"}', "model.safetensors": "newer weights"}


def test_publish_renames_the_staged_directory_into_place(tmp_path):
    root = tmp_path / "checkpoints"
    staged = _staged(root, "step_4", NEW)
    assert staged.name.startswith(ckpt.TMP_PREFIX) and staged.parent == root
    assert list_checkpoints(root) == []  # a staged save is not a checkpoint yet
    ckpt._publish(staged, root / "step_4")
    assert _contents(root / "step_4") == NEW
    assert [p.name for p in root.iterdir()] == ["step_4"]
    assert find_latest_checkpoint(root) == root / "step_4"


def test_publish_replaces_an_older_save_of_the_same_step_and_never_shows_a_partial_one(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    final = root / "step_4"
    final.mkdir(parents=True)
    for file, text in OLD.items():
        (final / file).write_text(text)
    staged = _staged(root, "step_4", NEW)

    seen, real_replace = [], os.replace

    def observing_replace(src, dst):
        real_replace(src, dst)
        # What a reader of step_4 (or a resume looking for the latest checkpoint) sees after each rename.
        seen.append(_contents(final) if final.exists() else None)

    monkeypatch.setattr(ckpt.os, "replace", observing_replace)
    ckpt._publish(staged, final)
    assert seen and all(view in (None, OLD, NEW) for view in seen)
    assert seen[-1] == NEW
    assert _contents(final) == NEW  # the old save's extra file is gone with it
    assert [p.name for p in root.iterdir()] == ["step_4"]  # neither the staged nor the old one is left


def test_publish_recovers_from_a_crash_before_the_old_save_was_deleted(tmp_path, monkeypatch):
    """A crash after the new save was renamed into place but before the old one (moved aside) was deleted:
    the step holds the new save, the old one lingers under a ``.tmp-`` name, and the next save of the same
    step must still succeed and clean it up."""
    root = tmp_path / "checkpoints"
    final = root / "step_4"
    final.mkdir(parents=True)
    for file, text in OLD.items():
        (final / file).write_text(text)
    real_rmtree = shutil.rmtree

    def crashing_rmtree(path, ignore_errors=False, **kwargs):
        if not ignore_errors:  # the deletion of the old save, not the clearing of a leftover
            raise OSError("killed while deleting")
        return real_rmtree(path, ignore_errors=ignore_errors, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(ckpt.shutil, "rmtree", crashing_rmtree)
        with pytest.raises(OSError, match="killed while deleting"):
            ckpt._publish(_staged(root, "step_4", NEW), final)
    assert _contents(final) == NEW
    leftovers = [p for p in root.iterdir() if p.name != "step_4"]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(ckpt.TMP_PREFIX)
    assert _contents(leftovers[0]) == OLD
    assert list_checkpoints(root) == [final]

    ckpt._publish(_staged(root, "step_4", NEWER), final)
    assert _contents(final) == NEWER
    assert [p.name for p in root.iterdir()] == ["step_4"]


def test_publish_syncs_the_parent_directory_after_the_rename(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    staged = _staged(root, "step_2", NEW)
    synced = []

    def recording_fsync_dir(directory):
        assert (Path(directory) / "step_2").is_dir()  # after the rename it makes durable
        synced.append(Path(directory))

    monkeypatch.setattr(ckpt, "_fsync_dir", recording_fsync_dir)
    ckpt._publish(staged, root / "step_2")
    assert synced == [root]


def test_staging_dir_deletes_a_leftover_of_a_crashed_save(tmp_path):
    leftover = tmp_path / ".tmp-step_6"
    leftover.mkdir()
    (leftover / "half_written.bin").write_text("x")
    staged = ckpt.staging_dir(tmp_path, "step_6")
    assert staged == leftover and staged.is_dir() and list(staged.iterdir()) == []


def test_find_latest_checkpoint_of_a_folder_without_checkpoints_is_none(tmp_path):
    assert find_latest_checkpoint(tmp_path) is None
    (tmp_path / ".tmp-step_3").mkdir()
    (tmp_path / ".tmp-step_3" / "trainer_state.json").write_text("{}")
    (tmp_path / "step_5").mkdir()  # no trainer_state.json: incomplete
    assert find_latest_checkpoint(tmp_path) is None


# ------------------------------------------------------------------------------------------------ extra state


class _Stateful:
    def __init__(self, state=None):
        self.state = state if state is not None else {}
        self.loaded = None

    def state_dict(self):
        return self.state

    def load_state_dict(self, state):
        self.loaded = state


class _OnlySaves:
    def state_dict(self):
        return {}


class _OnlyLoads:
    def load_state_dict(self, state):
        pass


def test_named_extra_state_names_list_items_by_position_and_keeps_mapping_names():
    a, b = _Stateful(), _Stateful()
    assert ckpt.named_extra_state(None) == {}
    assert ckpt.named_extra_state([a, b]) == {"0": a, "1": b}
    assert ckpt.named_extra_state((a,)) == {"0": a}
    assert ckpt.named_extra_state({"ema": a, "teacher.v-2": b}) == {"ema": a, "teacher.v-2": b}


@pytest.mark.parametrize("name", ["a/b", "has space", "", "../escape", 1])
def test_named_extra_state_rejects_names_that_are_not_safe_file_names(name):
    with pytest.raises(ValueError, match="extra_state name") as err:
        ckpt.named_extra_state({name: _Stateful()})
    assert repr(name) in str(err.value)


@pytest.mark.parametrize("obj", [_OnlySaves(), _OnlyLoads(), object()])
def test_named_extra_state_rejects_objects_without_both_state_methods(obj):
    with pytest.raises(TypeError, match=rf"extra_state\['x'\] \({type(obj).__name__}\) needs state_dict"):
        ckpt.named_extra_state({"x": obj})


def test_extra_state_round_trips_tensors_and_json_values_as_safetensors_and_json(tmp_path):
    weight = torch.arange(6.0).reshape(2, 3)
    state = {
        "weight": weight,
        "tied": weight,  # tied weights: the same storage twice
        "row": weight[1],  # a view into it
        "steps": torch.tensor(5, dtype=torch.int64),
        "num_updates": 8,
        "decay": 0.999,
        "name": "ema",
        "history": [1, 2, 3],
        "options": {"warmup": True},
    }
    ckpt.save_extra_state(tmp_path, "ema", _Stateful(state))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extra_ema.json", "extra_ema.safetensors"]
    tensors = load_file(tmp_path / "extra_ema.safetensors")
    assert set(tensors) == {"weight", "tied", "row", "steps"}
    assert torch.equal(tensors["tied"], weight) and torch.equal(tensors["row"], torch.tensor([3.0, 4.0, 5.0]))
    assert json.loads((tmp_path / "extra_ema.json").read_text()) == {
        "num_updates": 8,
        "decay": 0.999,
        "name": "ema",
        "history": [1, 2, 3],
        "options": {"warmup": True},
    }
    # Marked as PyTorch tensors, as transformers' and safetensors' loaders expect.
    with safe_open(tmp_path / "extra_ema.safetensors", framework="pt") as f:
        assert f.metadata() == {"format": "pt"}

    target = _Stateful()
    ckpt.load_extra_state(tmp_path, "ema", target)
    assert set(target.loaded) == set(state)
    for key, value in state.items():
        if torch.is_tensor(value):
            assert torch.equal(target.loaded[key], value) and target.loaded[key].dtype == value.dtype, key
        else:
            assert target.loaded[key] == value, key


def test_saved_extra_state_is_a_copy_not_a_view_of_the_live_tensors(tmp_path):
    weight = torch.zeros(3)
    ckpt.save_extra_state(tmp_path, "s", _Stateful({"w": weight}))
    weight += 1  # training goes on after the save
    assert torch.equal(load_file(tmp_path / "extra_s.safetensors")["w"], torch.zeros(3))


def test_save_extra_state_rejects_what_it_cannot_store(tmp_path):
    with pytest.raises(TypeError, match=r"extra_state\['bad'\]\.state_dict\(\) must return a dict, got list"):
        ckpt.save_extra_state(tmp_path, "bad", _Stateful([1, 2]))
    with pytest.raises(
        TypeError, match=r"extra_state\['odd'\]\.state_dict\(\) must hold only tensors and JSON"
    ):
        ckpt.save_extra_state(tmp_path, "odd", _Stateful({"s": {1, 2}}))


@pytest.mark.parametrize("missing", ["extra_ema.json", "extra_ema.safetensors"])
def test_load_extra_state_needs_both_files(tmp_path, missing):
    ckpt.save_extra_state(tmp_path, "ema", _Stateful({"w": torch.ones(2), "n": 1}))
    (tmp_path / missing).unlink()
    target = _Stateful()
    with pytest.raises(
        ValueError, match=r"no state for extra_state\['ema'\].*different set of extra_state objects"
    ):
        ckpt.load_extra_state(tmp_path, "ema", target)
    assert target.loaded is None


# ------------------------------------------------------------------------- save_checkpoint / load_checkpoint


def _accelerator_and_model(seed: int = 0):
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(seed)
    model = accelerator.prepare(nn.Linear(3, 2))
    return accelerator, model


def test_trainer_state_holds_the_documented_fields_and_numpy_metrics_as_numbers(tmp_path):
    accelerator, _ = _accelerator_and_model()
    history = [
        {"step": 2, "mAP": np.float32(0.25), "loss": np.float64(1.5)},
        {"step": 4, "mAP": 0.5, "note": _Opaque()},
    ]
    final = save_checkpoint(
        accelerator, tmp_path, 4, 1, {"epoch": 1, "examples_consumed": 16}, eval_history=history
    )
    assert final == tmp_path / "checkpoints" / "step_4"
    state = json.loads((final / "trainer_state.json").read_text())
    assert state == {
        "format_version": 1,
        "global_step": 4,
        "epoch": 1,
        "world_size": 1,
        "ranks": [{"epoch": 1, "data": {"epoch": 1, "examples_consumed": 16}}],
        "eval_history": [
            {"step": 2, "mAP": 0.25, "loss": 1.5},
            {"step": 4, "mAP": 0.5, "note": "opaque-thing"},
        ],
    }
    assert type(state["eval_history"][0]["mAP"]) is float


def test_save_checkpoint_rejects_a_data_state_json_cannot_hold(tmp_path):
    accelerator, _ = _accelerator_and_model()
    with pytest.raises(TypeError, match="train_batches.state_dict\\(\\) must be JSON-serializable"):
        save_checkpoint(accelerator, tmp_path, 2, 0, {"order": {1, 2}})
    assert list_checkpoints(ckpt.checkpoints_root(tmp_path)) == []


def test_saving_the_same_step_again_replaces_it_whole(tmp_path):
    accelerator, model = _accelerator_and_model()
    save_checkpoint(accelerator, tmp_path, 4, 0, {"pos": 1}, extra_state={"a": _Stateful({"n": 1})})
    with torch.no_grad():
        model.weight.fill_(0.5)
    save_checkpoint(accelerator, tmp_path, 4, 0, {"pos": 2})  # e.g. a rerun that resumed from an earlier step
    root = ckpt.checkpoints_root(tmp_path)
    assert [p.name for p in root.iterdir()] == ["step_4"]
    step = root / "step_4"
    assert not (step / "extra_a.json").exists()  # nothing of the first save survives in the second
    assert json.loads((step / "trainer_state.json").read_text())["ranks"][0]["data"] == {"pos": 2}
    assert torch.equal(load_file(step / "model.safetensors")["weight"], torch.full((2, 3), 0.5))


def test_load_checkpoint_restores_weights_rng_extra_state_and_positions(tmp_path):
    accelerator, model = _accelerator_and_model()
    history = [{"step": 3, "acc": 0.75}]
    extra = _Stateful({"w": torch.tensor([1.0, 2.0]), "n": 3})
    save_checkpoint(
        accelerator,
        tmp_path,
        3,
        2,
        {"pos": 7},
        extra_state={"e": extra},
        eval_history=history,
        train_loss_totals=(4.5, 6),
    )
    saved_weight = model.weight.detach().clone()
    expected_draw = torch.rand(4)  # the next draw after the save

    with torch.no_grad():
        model.weight.zero_()
    torch.manual_seed(1234)
    target = _Stateful()
    resumed = load_checkpoint(
        accelerator, ckpt.checkpoints_root(tmp_path) / "step_3", extra_state={"e": target}
    )
    assert resumed == {
        "global_step": 3,
        "epoch": 2,
        "data": {"pos": 7},
        "eval_history": history,
        "train_loss_totals": {"loss_sum": 4.5, "micro_steps": 6},
    }
    assert torch.equal(model.weight, saved_weight)
    assert torch.equal(torch.rand(4), expected_draw)
    assert torch.equal(target.loaded["w"], torch.tensor([1.0, 2.0])) and target.loaded["n"] == 3


def test_load_checkpoint_of_an_older_format_without_eval_history(tmp_path):
    accelerator, _ = _accelerator_and_model()
    final = save_checkpoint(accelerator, tmp_path, 2, 0, {"pos": 1}, eval_history=[{"step": 2}])
    state = json.loads((final / "trainer_state.json").read_text())
    del state["eval_history"]
    (final / "trainer_state.json").write_text(json.dumps(state))
    restored = load_checkpoint(accelerator, final)
    # an older checkpoint has no loss totals either: the resumed part's mean is all there is
    assert restored["eval_history"] == [] and restored["train_loss_totals"] is None


def test_load_checkpoint_refuses_another_world_size_naming_both(tmp_path):
    accelerator, _ = _accelerator_and_model()
    final = save_checkpoint(accelerator, tmp_path, 2, 0, {"pos": 1})
    state = json.loads((final / "trainer_state.json").read_text())
    state["world_size"] = 2
    (final / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(
        ValueError, match="written by 2 processes but this run has 1: .* different world size"
    ):
        load_checkpoint(accelerator, final)


def test_load_checkpoint_fails_loudly_when_the_rng_state_is_not_restored(tmp_path, monkeypatch):
    accelerator, _ = _accelerator_and_model()
    final = save_checkpoint(accelerator, tmp_path, 2, 0, {"pos": 1})

    # accelerate only logs when it cannot read the RNG file; the resume must stop instead.
    (final / "random_states_0.pkl").rename(tmp_path / "moved.pkl")
    with pytest.raises(
        RuntimeError, match="could not restore the RNG state of rank 0 from .*random_states_0"
    ):
        load_checkpoint(accelerator, final)
    (tmp_path / "moved.pkl").rename(final / "random_states_0.pkl")

    # A load_state that silently skipped the RNG leaves this process's draws where they were.
    real_load_state = accelerator.load_state

    def load_state_without_rng(input_dir):
        real_load_state(input_dir)
        torch.manual_seed(99)

    monkeypatch.setattr(accelerator, "load_state", load_state_without_rng)
    with pytest.raises(RuntimeError, match="did not restore the RNG state of rank 0 from .*random_states_0"):
        load_checkpoint(accelerator, final)
