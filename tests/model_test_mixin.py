"""Checks every hf_audiorep model family must pass: the transformers v5 contract, exercised on tiny configs.

A test module subclasses :class:`ModelTesterMixin` (its name starts with ``Test`` so pytest collects
it) and provides:

- ``model_classes``: the ``PreTrainedModel`` classes of the family (base model and heads);
- ``get_config(**overrides)``: a tiny config (a few thousand parameters at most);
- ``get_inputs(config)``: a batch ``{"input_values": ..., "attention_mask": ...}`` whose mask pads
  at least one clip, so masking is exercised by every equivalence check;
- ``expected_sequence_length(config, inputs)``: tokens in ``last_hidden_state`` (eval mode);
- ``invalid_config_values``: ``(field, value)`` pairs whose config must raise a ValueError that
  names the field;
- ``expected_non_persistent_buffers``: name suffixes of buffers that ``from_pretrained`` must
  recompute (e.g. ``("pos_embed",)``, mel banks, windows).

Optional: ``deterministic_overrides`` (config changes that remove randomness the gradient
checkpointing check cannot replay; by default it relies on checkpointing's RNG replay),
``expected_num_hidden_states(config)`` and ``expected_hidden_state_shapes(model_class, config, inputs)``
(default: every hidden state ``(batch, tokens, hidden_size)``; a CNN returns feature maps of its own
shape per block).

A family without attention (a CNN such as CP-Mobile) sets ``has_attentions = False``, as transformers'
own model tests do: it must then declare no attention backend (no SDPA support), and the SDPA/eager
check compares the model with itself. A model whose class sets ``supports_gradient_checkpointing =
False`` must refuse to enable it (a ValueError) instead of passing the checkpointing check.

The family's entry in :mod:`hf_audiorep.registry` (found from the config's ``model_type``) supplies the
Auto classes: ``model_classes`` must list exactly its base model and heads.

Pre-training models (class name ending in ``ForPreTraining``, like transformers'
``Wav2Vec2ForPreTraining``) return their own ``loss`` and a ``logits`` prediction, and usually draw
random masks. A family that lists one also provides:

- ``get_pretraining_inputs(config, inputs)``: the batch for the pre-training model, with whatever
  makes its output a deterministic, per-clip function of the inputs (e.g. a ``noise`` tensor that
  fixes the masks); every equivalence check then runs on it;
- ``expected_pretraining_sequence_length(config, inputs)``: tokens per encoder hidden state.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from transformers import AutoConfig
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput

ATOL = 1e-5


def is_head(model_class) -> bool:
    """A head takes ``labels`` and returns a loss; a base model does not."""
    return "labels" in inspect.signature(model_class.forward).parameters


def is_pretraining(model_class) -> bool:
    """A pre-training model computes its own self-supervised loss (transformers' ``XForPreTraining``)."""
    return model_class.__name__.endswith("ForPreTraining")


def config_fields(config) -> dict[str, Any]:
    """The config as saved, without where it was loaded from."""
    return {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}


def main_output(outputs) -> torch.Tensor:
    return outputs.logits if getattr(outputs, "logits", None) is not None else outputs.last_hidden_state


def multi_hot_labels(batch_size: int, num_labels: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.rand(batch_size, num_labels, generator=generator) < 0.4).float()
    labels[:, 0] = 1.0  # every clip has at least one positive
    return labels


class ModelTesterMixin:
    model_classes: tuple[type, ...] = ()
    invalid_config_values: list[tuple[str, Any]] = []
    expected_non_persistent_buffers: tuple[str, ...] = ()
    deterministic_overrides: dict[str, Any] = {}
    has_attentions: bool = True
    #: registry classes whose checks live in a test module of their own (it must name this mixin's checks
    #: it repeats for them)
    tested_elsewhere: tuple[type, ...] = ()

    # ---- hooks the test class provides ---------------------------------------------------

    def get_config(self, **overrides):
        raise NotImplementedError

    def get_inputs(self, config) -> dict[str, torch.Tensor]:
        """A padded spectrogram batch: 56 frames (not a multiple of the patch size, so the model pads its
        last patch) with two rows padded at 40 and 17 frames. Spectrogram models share it; others override."""
        generator = torch.Generator().manual_seed(0)
        input_values = torch.randn(3, 56, config.num_mel_bins, generator=generator)
        attention_mask = torch.ones(3, 56, dtype=torch.long)
        attention_mask[1, 40:] = 0
        attention_mask[2, 17:] = 0
        return {"input_values": input_values, "attention_mask": attention_mask}

    def expected_sequence_length(self, config, inputs) -> int:
        raise NotImplementedError

    def architecture(self):
        from hf_audiorep.registry import architecture_for

        return architecture_for(self.get_config().model_type)

    def register_auto_classes(self) -> dict[type, type]:
        """Registers every architecture (as ``import hf_audiorep`` does; idempotent) and returns this family's
        ``{AutoModelClass: model_class}``."""
        from hf_audiorep.registry import register_auto_classes

        register_auto_classes()
        return self.architecture().auto_models

    def expected_num_hidden_states(self, config) -> int:
        return config.num_hidden_layers + 1

    def expected_hidden_state_shapes(self, model_class, config, inputs) -> list[tuple[int, ...]]:
        """The shape of each hidden state: ``(batch, tokens, hidden_size)`` for every one by default."""
        if is_pretraining(model_class):
            num_tokens = self.expected_pretraining_sequence_length(config, inputs)
        else:
            num_tokens = self.expected_sequence_length(config, inputs)
        shape = (inputs["input_values"].shape[0], num_tokens, config.hidden_size)
        return [shape] * self.expected_num_hidden_states(config)

    def get_pretraining_inputs(self, config, inputs) -> dict[str, torch.Tensor]:
        raise NotImplementedError("a family with a *ForPreTraining model must define get_pretraining_inputs")

    def expected_pretraining_sequence_length(self, config, inputs) -> int:
        raise NotImplementedError(
            "a family with a *ForPreTraining model must define expected_pretraining_sequence_length"
        )

    # ---- helpers ----------------------------------------------------------------------------

    def build(self, model_class, config, seed: int = 0):
        torch.manual_seed(seed)
        return model_class(config).eval()

    def loss_of(self, model, outputs) -> torch.Tensor:
        if getattr(outputs, "loss", None) is not None:
            return outputs.loss
        return outputs.last_hidden_state.float().pow(2).mean() + outputs.pooler_output.float().pow(2).mean()

    def model_inputs(self, model_class, config, inputs) -> dict[str, torch.Tensor]:
        """The batch ``model_class`` runs on: ``inputs``, or its pre-training version."""
        if is_pretraining(model_class):
            return dict(self.get_pretraining_inputs(config, inputs))
        return dict(inputs)

    def forward_kwargs(self, model_class, config, inputs) -> dict[str, torch.Tensor]:
        kwargs = self.model_inputs(model_class, config, inputs)
        if is_head(model_class):
            kwargs["labels"] = multi_hot_labels(inputs["input_values"].shape[0], config.num_labels)
        return kwargs

    # ---- the checks -------------------------------------------------------------------------

    def test_mixin_is_configured(self):
        assert self.model_classes, "set model_classes"
        assert self.invalid_config_values, "list invalid_config_values"
        inputs = self.get_inputs(self.get_config())
        mask = inputs.get("attention_mask")
        assert mask is not None and not bool(mask.bool().all()), "get_inputs must pad at least one clip"

    def test_model_classes_are_the_registry_entry(self):
        # Every Auto class the registry (and so the Hub's auto_map) promises goes through the checks below,
        # or through its own module's (a seq2seq head, whose inputs and outputs these checks do not know).
        promised = set(self.architecture().auto_models.values())
        assert set(self.model_classes) | set(self.tested_elsewhere) == promised
        assert not set(self.model_classes) & set(self.tested_elsewhere)

    def test_default_attention_is_sdpa(self):
        for model_class in self.model_classes:
            if not self.has_attentions:
                # Nothing to choose: a family without attention must not claim an attention backend.
                assert not model_class._supports_sdpa, model_class.__name__
                continue
            model = self.build(model_class, self.get_config())
            assert model.config._attn_implementation == "sdpa", model_class.__name__

    def test_output_attentions_gives_every_layers_weights(self):
        # transformers' contract: with eager attention, output_attentions=True returns one
        # (batch, heads, queries, keys) softmax per layer, and asking for them changes no output.
        if not self.has_attentions:
            return
        config = self.get_config(problem_type="multi_label_classification")
        config._attn_implementation = "eager"
        inputs = self.get_inputs(config)
        for model_class in self.model_classes:
            if is_pretraining(model_class):
                continue  # its attentions are the student's on its masked tokens; the encoder's are checked
            model = self.build(model_class, config)
            with torch.no_grad():
                plain = model(**inputs)
                outputs = model(**inputs, output_attentions=True)
            torch.testing.assert_close(main_output(outputs), main_output(plain), atol=ATOL, rtol=0)
            attentions = outputs.attentions
            name = model_class.__name__
            assert attentions is not None and len(attentions) == config.num_hidden_layers, name
            for weights in attentions:
                batch, _heads, queries, keys = weights.shape
                assert batch == inputs["input_values"].shape[0] and queries == keys, name
                torch.testing.assert_close(
                    weights.sum(-1), torch.ones_like(weights[..., 0]), atol=1e-5, rtol=0
                )

    def test_outputs_types_shapes_and_hidden_states(self):
        config = self.get_config(problem_type="multi_label_classification")
        inputs = self.get_inputs(config)
        batch_size = inputs["input_values"].shape[0]
        for model_class in self.model_classes:
            model = self.build(model_class, config)
            model_inputs = self.model_inputs(model_class, config, inputs)
            with torch.no_grad():
                outputs = model(**model_inputs, output_hidden_states=True)
            hidden_states = outputs.hidden_states
            assert hidden_states is not None and len(hidden_states) == self.expected_num_hidden_states(config)
            expected_shapes = self.expected_hidden_state_shapes(model_class, config, inputs)
            assert [tuple(state.shape) for state in hidden_states] == [tuple(s) for s in expected_shapes]
            if is_pretraining(model_class):
                # The self-supervised loss needs no labels; the prediction is per clip.
                assert outputs.loss is not None and outputs.loss.ndim == 0 and torch.isfinite(outputs.loss)
                assert outputs.logits.shape[0] == batch_size
                assert isinstance(getattr(model, model_class.base_model_prefix), torch.nn.Module)
            elif is_head(model_class):
                assert isinstance(outputs, SequenceClassifierOutput)
                assert outputs.logits.shape == (batch_size, config.num_labels)
                assert outputs.loss is None
                # transformers loads a head checkpoint into the base class through this attribute.
                assert isinstance(getattr(model, model_class.base_model_prefix), torch.nn.Module)
            else:
                assert isinstance(outputs, BaseModelOutputWithPooling)
                assert outputs.last_hidden_state.shape == hidden_states[-1].shape
                assert outputs.pooler_output.shape == (batch_size, config.hidden_size)
            assert torch.isfinite(main_output(outputs)).all()
            assert len(model(**model_inputs).to_tuple()) >= 1
            assert model(**model_inputs, output_hidden_states=False).hidden_states is None

    def test_save_load_round_trip(self, tmp_path):
        config = self.get_config()
        inputs = self.get_inputs(config)
        for model_class in self.model_classes:
            model = self.build(model_class, config)
            path = tmp_path / model_class.__name__
            model.save_pretrained(path)
            loaded = model_class.from_pretrained(path).eval()
            assert config_fields(loaded.config) == config_fields(model.config)
            for name, tensor in model.state_dict().items():
                torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
            model_inputs = self.model_inputs(model_class, config, inputs)
            with torch.no_grad():
                torch.testing.assert_close(
                    main_output(loaded(**model_inputs)), main_output(model(**model_inputs)), rtol=0, atol=1e-6
                )

    def test_auto_classes_round_trip(self, tmp_path):
        mapping = self.register_auto_classes()
        assert mapping, "register_auto_classes must return {AutoClass: model_class}"
        config = self.get_config()
        inputs = self.get_inputs(config)
        for auto_class, model_class in mapping.items():
            if model_class in self.tested_elsewhere:
                continue
            model = self.build(model_class, config)
            path = tmp_path / auto_class.__name__
            model.save_pretrained(path)
            assert type(AutoConfig.from_pretrained(path)) is type(config)
            loaded = auto_class.from_pretrained(path).eval()
            assert type(loaded) is model_class
            model_inputs = self.model_inputs(model_class, config, inputs)
            with torch.no_grad():
                torch.testing.assert_close(
                    main_output(loaded(**model_inputs)), main_output(model(**model_inputs)), rtol=0, atol=1e-6
                )

    def test_construction_on_meta_device(self):
        config = self.get_config()
        for model_class in self.model_classes:
            with torch.device("meta"):
                meta_model = model_class(config)
            tensors = list(meta_model.parameters()) + list(meta_model.buffers())
            assert tensors and all(t.is_meta for t in tensors)
            real = self.build(model_class, config)
            num_params = sum(p.numel() for p in real.parameters())
            assert sum(p.numel() for p in meta_model.parameters()) == num_params

    def test_non_persistent_buffers_recomputed_after_load(self, tmp_path):
        config = self.get_config()
        for model_class in self.model_classes:
            fresh = self.build(model_class, config)
            buffers = dict(fresh.named_non_persistent_buffers())
            for suffix in self.expected_non_persistent_buffers:
                assert any(name.endswith(suffix) for name in buffers), f"no non-persistent buffer {suffix}"
            fresh.save_pretrained(tmp_path / model_class.__name__)
            loaded = model_class.from_pretrained(tmp_path / model_class.__name__)
            for name, value in loaded.named_non_persistent_buffers():
                torch.testing.assert_close(value, buffers[name], rtol=0, atol=0, msg=name)

    def test_built_without_weight_init_then_loaded_computes_like_the_original(self):
        """Non-persistent buffers (sin-cos positions) are right from construction: a model built under
        ``no_init_weights`` and given a state dict (which never holds them) must not use zero positions."""
        from transformers.initialization import no_init_weights

        config = self.get_config()
        for model_class in self.model_classes:
            original = self.build(model_class, config)
            with no_init_weights():
                bare = model_class(config)
            bare.load_state_dict(original.state_dict())
            for name, value in original.named_non_persistent_buffers():
                torch.testing.assert_close(dict(bare.named_non_persistent_buffers())[name], value, msg=name)

    def test_sdpa_matches_eager(self):
        config = self.get_config()
        for model_class in self.model_classes:
            inputs = self.model_inputs(model_class, config, self.get_inputs(config))
            # Without a mask SDPA takes its mask-free path (where a wrong `is_causal` would show).
            unmasked = {k: v for k, v in inputs.items() if k != "attention_mask"}
            model = self.build(model_class, config)
            with torch.no_grad():
                sdpa = [main_output(model(**batch)) for batch in (inputs, unmasked)]
                model.set_attn_implementation("eager")
                assert model.config._attn_implementation == "eager"
                eager = [main_output(model(**batch)) for batch in (inputs, unmasked)]
            for fast, reference in zip(sdpa, eager, strict=True):
                torch.testing.assert_close(fast, reference, rtol=0, atol=ATOL)

    def test_batched_equals_one_by_one(self):
        config = self.get_config()
        batch_size = self.get_inputs(config)["input_values"].shape[0]
        for model_class in self.model_classes:
            inputs = self.model_inputs(model_class, config, self.get_inputs(config))
            model = self.build(model_class, config)
            with torch.no_grad():
                batched = main_output(model(**inputs))
                for i in range(batch_size):
                    single = main_output(model(**{k: v[i : i + 1] for k, v in inputs.items()}))
                    torch.testing.assert_close(single, batched[i : i + 1], rtol=0, atol=ATOL)

    def test_a_bfloat16_model_takes_float32_features(self):
        # What users write: `from_pretrained(..., dtype=torch.bfloat16)`, then the feature extractor's float32
        # output. CAT's stem once handed float32 tokens to its bfloat16 LayerNorm, which refused them.
        config = self.get_config()
        for model_class in (c for c in self.model_classes if not is_pretraining(c)):
            inputs = self.model_inputs(model_class, config, self.get_inputs(config))
            model = self.build(model_class, config)
            with torch.no_grad():
                reference = main_output(model(**inputs))
                low = main_output(model.to(torch.bfloat16)(**inputs))
            assert low.dtype == torch.bfloat16, model_class.__name__
            scale = reference.abs().max().item()
            torch.testing.assert_close(low.float(), reference, rtol=0, atol=0.05 * scale)

    def test_gradient_checkpointing_gives_the_same_gradients(self):
        config = self.get_config(**self.deterministic_overrides)
        inputs = self.get_inputs(config)
        for model_class in self.model_classes:
            model = self.build(model_class, config).train()
            if not model_class.supports_gradient_checkpointing:
                with pytest.raises(ValueError, match="checkpointing"):
                    model.activation_checkpointing_enable()
                assert not model.is_activation_checkpointing
                continue
            kwargs = self.forward_kwargs(model_class, config, inputs)
            # Checkpointed blocks run their inner layers again in the backward pass: count the calls.
            calls = [0]

            def count(*_, calls=calls):
                calls[0] += 1

            linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
            hooks = [m.register_forward_hook(count) for m in linears]
            grads, num_calls = [], []
            for checkpointing in (False, True):
                if checkpointing:
                    model.activation_checkpointing_enable()
                    assert model.is_activation_checkpointing
                model.zero_grad(set_to_none=True)
                calls[0] = 0
                torch.manual_seed(1234)  # same dropout / drop-path / patch-out draws in both runs
                self.loss_of(model, model(**kwargs)).backward()
                grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
                num_calls.append(calls[0])
            for hook in hooks:
                hook.remove()
            assert num_calls[1] > num_calls[0], "activation checkpointing did not recompute anything"
            plain, checkpointed = grads
            assert plain.keys() == checkpointed.keys() and plain
            assert any(g.abs().sum() > 0 for g in plain.values())
            for name, grad in plain.items():
                assert torch.isfinite(checkpointed[name]).all(), name
                torch.testing.assert_close(checkpointed[name], grad, rtol=1e-4, atol=ATOL, msg=name)

    def test_a_frozen_encoder_trains_its_adapters_under_reentrant_checkpointing(self):
        # PEFT's path (LoRA, prepare_model_for_kbit_training): frozen weights, a few trainable ones inside the
        # blocks, reentrant checkpointing. Reentrant checkpointing passes gradients only through block inputs
        # that require grad, which `enable_input_require_grads` arranges by hooking `get_input_embeddings()`.
        from transformers.modeling_layers import GradientCheckpointingLayer

        config = self.get_config(**self.deterministic_overrides)
        inputs = self.get_inputs(config)
        for model_class in self.model_classes:
            if not model_class.supports_gradient_checkpointing or is_pretraining(model_class):
                continue
            model = self.build(model_class, config).train()
            block = next(m for m in model.modules() if isinstance(m, GradientCheckpointingLayer))
            adapter = next(block.parameters())
            for parameter in model.parameters():
                parameter.requires_grad_(parameter is adapter)
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
            model.enable_input_require_grads()
            self.loss_of(model, model(**self.forward_kwargs(model_class, config, inputs))).backward()
            assert adapter.grad is not None and adapter.grad.abs().sum() > 0, model_class.__name__

    def test_invalid_config_values_name_the_field(self):
        for field, value in self.invalid_config_values:
            with pytest.raises(ValueError, match=field):
                self.get_config(**{field: value})

    def test_multi_label_loss_is_bce_with_logits(self):
        config = self.get_config(problem_type="multi_label_classification")
        inputs = self.get_inputs(config)
        heads = [c for c in self.model_classes if is_head(c)]
        assert heads, "no model class takes labels"
        for model_class in heads:
            model = self.build(model_class, config)
            labels = multi_hot_labels(inputs["input_values"].shape[0], config.num_labels)
            outputs = model(**inputs, labels=labels)
            expected = torch.nn.functional.binary_cross_entropy_with_logits(outputs.logits, labels)
            torch.testing.assert_close(outputs.loss, expected)
            outputs.loss.backward()
            assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
