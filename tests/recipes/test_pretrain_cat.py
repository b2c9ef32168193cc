"""CAT bootstrap pre-training: the EMA teacher, the step (targets, RR wiring), and the recipe end to end."""

import json

import pytest
import torch
from recipe_utils import launch_env, load_recipe, recipe_args
from safetensors.torch import load_file
from transformers import AutoModel

import hf_audiorep
from hf_audiorep import hub
from hf_audiorep.modeling import (
    AudioFbankFeatureExtractor,
    AudioMAEConfig,
    AudioMAEModel,
    CATConfig,
    CATForPreTraining,
    CATModel,
)
from hf_audiorep.modeling.modeling_cat import make_teacher_targets
from hf_audiorep.objectives import BootstrapPretrainingStep, FrozenTeacher, build_ema_teacher

TINY = dict(
    stem_channels=(8, 16),
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_length=64,
    num_mel_bins=32,
    decoder_dim=32,
    decoder_layers=1,
    decoder_groups=4,
    average_top_k_layers=2,
    clone_batch=2,
    rr_embedding_dim=8,
)


def tiny_model(seed: int = 0, **overrides) -> CATForPreTraining:
    torch.manual_seed(seed)
    return CATForPreTraining(CATConfig(**{**TINY, **overrides})).train()


class SpectrogramBatches:
    """A feature extractor that passes spectrograms through (the batch's 'waveforms' are features)."""

    sampling_rate = 16000

    def batch_features(self, waveforms, lengths):
        return waveforms, None


def spectrogram_batch(batch: int = 2, rr_dim: int = 8, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "waveforms": torch.randn(batch, 64, 32, generator=generator),
        "lengths": torch.full((batch,), 64),
        "labels": torch.zeros(batch, 3),
        "rr": torch.randn(batch, rr_dim, generator=generator),
    }


# ---- the EMA teacher --------------------------------------------------------------------------


def test_ema_teacher_follows_the_config_ramp_and_averages_the_encoder():
    model = tiny_model(ema_decay=0.5, ema_end_decay=0.9, ema_anneal_end_steps=4)
    teacher = build_ema_teacher(model)
    assert isinstance(teacher.module, CATModel), "the teacher is the encoder, without decoder or projector"
    assert not any(p.requires_grad for p in teacher.module.parameters())
    assert [round(teacher.decay_at(s), 6) for s in (0, 2, 4, 10)] == [0.5, 0.7, 0.9, 0.9]

    before = {k: v.clone() for k, v in teacher.module.state_dict().items()}
    with torch.no_grad():
        for p in model.cat.parameters():
            p.add_(1.0)
    student = model.cat.state_dict()
    assert teacher.update(model.cat) == 0.5
    for name, value in teacher.module.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.5 * before[name] + 0.5 * student[name], msg=name)
    # Arguments override the config (CPU-length runs need a faster teacher than AudioSet's 0.9998).
    assert build_ema_teacher(model, decay=0.99, end_decay=0.99).decay_at(1000) == 0.99


# ---- the step ----------------------------------------------------------------------------------


def test_teacher_targets_are_the_normalised_average_of_the_teacher_ffn_outputs():
    model = tiny_model().eval()
    step = BootstrapPretrainingStep(SpectrogramBatches(), build_ema_teacher(model))
    batch = spectrogram_batch()
    targets = step.teacher_targets(batch["waveforms"], None)
    with torch.no_grad():
        outputs = model.cat(batch["waveforms"], output_ffn_states=True)
    expected = make_teacher_targets(outputs.ffn_states, top_k=2)
    torch.testing.assert_close(targets, expected)
    assert targets.shape == (2, 4 * 2, 32) and not targets.requires_grad


def test_step_loss_parts_fall_on_a_tiny_overfit_run():
    model = tiny_model()
    # A still teacher (decay 1) keeps the targets fixed, so falling losses mean the student fits them.
    teacher = build_ema_teacher(model, decay=1.0, end_decay=1.0)
    step = BootstrapPretrainingStep(SpectrogramBatches(), teacher, rr_column="rr")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = spectrogram_batch()
    history = []
    for i in range(25):
        torch.manual_seed(i % 2)  # two fixed sets of masks, so the task can be fitted
        loss, logs = step(model, batch)
        assert torch.isfinite(loss) and set(logs) == {"patch_loss", "cls_loss", "rr_loss", "ema_decay"}
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        step.update_teacher(model, i)
        history.append({k: float(v) for k, v in logs.items()})
    # The CLS leaves a post-LN block, so it cannot shrink toward the (smaller) mean target quickly.
    for part, ratio in (("patch_loss", 0.7), ("cls_loss", 0.85), ("rr_loss", 0.7)):
        assert history[-1][part] < ratio * history[0][part], (part, history[0][part], history[-1][part])
    assert teacher.num_updates == 25


def save_tiny_rr_teacher(path, kind: str) -> None:
    """A frozen RR teacher saved as users would save one: a tiny random ClapModel or hf_audiorep model."""
    torch.manual_seed(0)
    if kind == "clap":
        from clap_utils import PROJECTION_DIM, TINY_HTSAT, TINY_ROBERTA, clap_extractor
        from transformers import ClapConfig, ClapModel

        config = ClapConfig(text_config=TINY_ROBERTA, audio_config=TINY_HTSAT, projection_dim=PROJECTION_DIM)
        ClapModel(config).save_pretrained(path)
        clap_extractor().save_pretrained(path)
        return
    rr_config = AudioMAEConfig(
        hidden_size=8, num_hidden_layers=1, num_attention_heads=2, max_length=112, num_mel_bins=128
    )
    AudioMAEModel(rr_config).save_pretrained(path)
    AudioFbankFeatureExtractor(target_length=112).save_pretrained(path)


@pytest.mark.parametrize("kind", ["clap", "hf_audiorep"])
def test_rr_gradient_reaches_the_projector_and_never_a_frozen_teacher(tmp_path, kind):
    # RR toward a frozen encoder computed on the fly, with its own front end and sample rate (CLAP: 48 kHz).
    save_tiny_rr_teacher(tmp_path / "rr", kind)
    rr_teacher = FrozenTeacher.from_pretrained(str(tmp_path / "rr"))
    assert rr_teacher.kind == kind and rr_teacher.embedding_dim == 8

    model = tiny_model(num_mel_bins=128, max_length=112)
    ema = build_ema_teacher(model)
    step = BootstrapPretrainingStep(
        AudioFbankFeatureExtractor(target_length=112), ema, rr_teacher=rr_teacher, sample_rate=16000
    )
    batch = {"waveforms": 0.1 * torch.randn(2, 16000), "lengths": torch.tensor([16000, 12000])}
    loss, logs = step(model, batch)
    loss.backward()
    assert "rr_loss" in logs and logs["rr_loss"] > 0
    assert model.rr_projector.weight.grad is not None and model.rr_projector.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in rr_teacher.model.parameters())
    assert all(p.grad is None for p in ema.module.parameters())
    assert all(p.grad is not None for p in model.parameters()), "every parameter takes part (DDP)"


def test_step_rejects_ambiguous_or_missing_rr_targets():
    model = tiny_model()
    teacher = build_ema_teacher(model)
    with pytest.raises(ValueError, match="not both"):
        BootstrapPretrainingStep(SpectrogramBatches(), teacher, rr_teacher=object(), rr_column="rr")
    with pytest.raises(TypeError, match="ModelEMA"):
        BootstrapPretrainingStep(SpectrogramBatches(), model)
    step = BootstrapPretrainingStep(SpectrogramBatches(), teacher, rr_column="clap_embedding")
    with pytest.raises(KeyError, match="clap_embedding"):
        step(model, spectrogram_batch())


# ---- the recipe ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cat") / "run"
    recipe = load_recipe("pretrain_cat")
    summary = recipe.main(recipe_args(out, max_steps=4, eval_steps=2, checkpointing_steps=2))
    return out, summary, recipe


def test_recipe_pretrains_probes_and_saves(pretrained, tmp_path):
    out, summary, _ = pretrained
    results = json.loads((out / "eval_results.json").read_text())
    assert 0.0 < results["probe_mAP"] <= 1.0 and results["split"] == "test"
    # Probed at the initialisation too (eval_on_start): the run's own baseline, reported and plotted.
    assert [row["step"] for row in results["eval_history"]] == [0, 2, 4]
    assert results["probe_mAP_initialization"] == results["eval_history"][0]["probe_mAP"]
    # And the trivial baselines, measured once on the same clips: a constant score and the log-mel statistics.
    baselines = [{key: row[key] for key in ("probe_mAP_chance", "probe_mAP_input_statistics")}
                 for row in results["eval_history"]]  # fmt: skip
    assert baselines == [baselines[0]] * 3 and 0.0 < baselines[0]["probe_mAP_chance"] < 1.0
    assert results["probe_mAP_chance"] < results["probe_mAP_input_statistics"] <= 1.0
    assert (out / "probe_curve.png").stat().st_size > 0
    assert summary["global_step"] == 4 and summary["train_loss"] > 0
    saved = load_file(str(out / "model.safetensors"))
    assert any(k.startswith("decoder.") for k in saved) and any(k.startswith("cat.stem.") for k in saved)
    assert not any(k.startswith("rr_projector.") for k in saved), "no RR teacher: no projector"
    # The encoder alone loads through the Auto classes.
    encoder = AutoModel.from_pretrained(out)
    assert isinstance(encoder, CATModel) and encoder.config.model_type == "audiorep-cat"
    pretraining = CATForPreTraining.from_pretrained(out)
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(tensor, pretraining.cat.state_dict()[name]), name
    # A published card reports the probe as a linear-probe mAP, with its protocol.
    card = (hub.prepare_repo(out, tmp_path / "repo", repo_id="org/cat-small") / "README.md").read_text()
    assert "linear-probe mAP" in card and "frozen encoder" in card
    # beside its baselines, so a reader can tell what the pre-training added
    assert (
        f"The same probe on the same clips: the encoder's random initialisation "
        f"{results['probe_mAP_initialization']:.4f}; the input features' mean and standard deviation, "
        f"without an encoder {results['probe_mAP_input_statistics']:.4f}; a constant score "
        f"{results['probe_mAP_chance']:.4f}." in card
    )
    assert "pipeline_tag: feature-extraction" in card
    # The EMA teacher is checkpointed as safetensors with the run.
    checkpoint = out / "checkpoints" / "step_4"
    assert any(k.startswith("module.") for k in load_file(str(checkpoint / "extra_ema_teacher.safetensors")))


def test_recipe_resumes_exactly_after_a_crash(pretrained, tmp_path, monkeypatch):
    out, _, recipe = pretrained
    reference = CATForPreTraining.from_pretrained(out).state_dict()

    calls = {"n": 0}
    original = recipe.BootstrapPretrainingStep.__call__

    def crash_after_three(self, model, batch):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("simulated crash")
        return original(self, model, batch)

    crashed = tmp_path / "crashed"
    monkeypatch.setattr(recipe.BootstrapPretrainingStep, "__call__", crash_after_three)
    with pytest.raises(RuntimeError, match="simulated crash"):
        recipe.main(recipe_args(crashed, max_steps=4, eval_steps=2, checkpointing_steps=2))
    monkeypatch.setattr(recipe.BootstrapPretrainingStep, "__call__", original)
    summary = recipe.main(
        recipe_args(
            crashed, max_steps=4, eval_steps=2, checkpointing_steps=2, resume_from_checkpoint="latest"
        )
    )
    assert summary["resumed_from_checkpoint"].endswith("step_2")
    # The evaluations made before the crash come back with the checkpoint: the report is the whole run's.
    history = json.loads((crashed / "eval_results.json").read_text())["eval_history"]
    assert history == json.loads((out / "eval_results.json").read_text())["eval_history"]
    resumed = CATForPreTraining.from_pretrained(crashed).state_dict()
    for name, tensor in reference.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=0, msg=name)


def test_recipe_with_an_rr_teacher_trains_the_projector(pretrained, tmp_path):
    out, _, recipe = pretrained
    # Any model of the library can be the frozen RR teacher: here the CAT encoder just pre-trained.
    summary = recipe.main(
        recipe_args(tmp_path / "rr", max_steps=2, eval_steps=0, checkpointing_steps=0, rr_teacher=str(out))
    )
    config = json.loads((tmp_path / "rr" / "config.json").read_text())
    assert config["rr_embedding_dim"] == hf_audiorep.CATConfig.from_preset("cat-small").hidden_size
    assert summary["global_step"] == 2
    saved = load_file(str(tmp_path / "rr" / "model.safetensors"))
    assert saved["rr_projector.weight"].shape == (config["rr_embedding_dim"], config["hidden_size"])
    with pytest.raises(ValueError, match="not a CAT preset"):
        recipe.main(recipe_args(tmp_path / "bad", preset="audiomae-tiny", max_steps=1))


def test_recipe_streams_a_parquet_dataset_with_precomputed_rr_targets(pretrained, tmp_path):
    """--dataset <dir in the Hub's Parquet layout> --streaming with targets from a precomputed column."""
    _, _, recipe = pretrained
    from hf_audiorep.data import load_embedded_corpus
    from hf_audiorep.objectives import precompute_teacher_embeddings

    clips = load_embedded_corpus(num_train=16, num_validation=0, num_test=8, num_heldout=0, clip_seconds=2.0)
    torch.manual_seed(0)
    rr_config = AudioMAEConfig(
        hidden_size=8, num_hidden_layers=1, num_attention_heads=2, max_length=208, num_mel_bins=128
    )
    AudioMAEModel(rr_config).save_pretrained(tmp_path / "rr")
    AudioFbankFeatureExtractor(target_length=208).save_pretrained(tmp_path / "rr")
    teacher = FrozenTeacher.from_pretrained(str(tmp_path / "rr"))
    train = precompute_teacher_embeddings(clips["train"], teacher, column="clap_embedding")
    (tmp_path / "hub" / "data").mkdir(parents=True)
    train.to_parquet(str(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet"))

    args = recipe_args(tmp_path / "run", max_steps=2, eval_steps=0, checkpointing_steps=0, probe_dataset="")
    summary = recipe.main(
        args + ["--dataset", str(tmp_path / "hub"), "--streaming", "true", "--rr_column", "clap_embedding"]
    )
    assert summary["global_step"] == 2
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["rr_embedding_dim"] == 8, "the projector follows the column's width"
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert saved["rr_projector.weight"].shape == (8, config["hidden_size"])


def test_recipe_runs_on_two_processes_with_accelerate_launch(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU: DDP over the student, one EMA teacher
    per rank kept identical by identical updates, each rank on its own shard."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = launch_env(tmp_path)
    command = [
        str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(root / "recipes" / "pretrain_cat.py"),
        *recipe_args(tmp_path / "ddp", max_steps=2, eval_steps=0, checkpointing_steps=2, probe_dataset=""),
    ]  # fmt: skip
    proc = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = json.loads((tmp_path / "ddp" / "train_results.json").read_text())
    assert results["world_size"] == 2 and results["distributed_type"] == "DistributedType.MULTI_CPU"
    assert results["global_step"] == 2 and results["train_clips"] == 2 * 2 * 4
    assert results["training_command"].startswith("accelerate launch --num_processes 2")
    state = json.loads((tmp_path / "ddp" / "checkpoints" / "step_2" / "trainer_state.json").read_text())
    assert len(state["ranks"]) == 2


@pytest.mark.slow
def test_the_small_preset_learns_instead_of_collapsing(tmp_path):
    """The main job's defaults must leave the encoder better than its initialisation.

    With the reference's CLS (utterance) term, the cat-small encoder fell below its random initialisation
    within 50 steps: the term's gradient was 50-800x the patch term's and pulled every clip's embedding
    toward one vector (docs/benchmarks.md, "Why CAT's bootstrap did not learn"). Same preset, same data
    order: the probe after a short run must beat the probe of the initialisation by a clear margin.
    """
    recipe = load_recipe("pretrain_cat")
    out = tmp_path / "run"
    options = {
        "output_dir": str(out),
        "clip_seconds": "2.0",
        "num_train_clips": "800",
        "num_eval_clips": "8",
        "num_test_clips": "400",
        "probe_train_clips": "400",
        "max_steps": "120",
        "eval_steps": "0",
        "checkpointing_steps": "0",
        "num_decode_threads": "2",
        "cpu": "true",
        "disable_progress_bar": "true",
    }
    recipe.main([part for key, value in options.items() for part in (f"--{key}", value)])
    results = json.loads((out / "eval_results.json").read_text())
    initial, final = results["probe_mAP_initialization"], results["probe_mAP"]
    # Measured (corpus version 2, whose clips carry rooms, distances and recording chains): 0.121 at
    # initialisation, 0.149 after 120 steps with the preset's 60 % masking (0.141 after 80; 80 % masking gave
    # 0.150 after 80 and 120). A collapsed encoder ends below 0.121.
    assert final > initial + 0.02, f"probe mAP {final:.4f} after 120 steps vs {initial:.4f} at initialisation"
