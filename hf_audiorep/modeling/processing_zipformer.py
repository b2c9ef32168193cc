"""The caption model's processor: the Zipformer's fbank front end and the decoder's tokenizer, saved and
loaded together (``AutoProcessor``), as Whisper's processor pairs its feature extractor and tokenizer.

Only torch and transformers are imported here, so the file can ship as Hub remote code.
"""

import os

import torch
from transformers import ProcessorMixin

__all__ = ["ZipformerProcessor"]

#: what a saved tokenizer writes (one of them at least)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


class ZipformerProcessor(ProcessorMixin):
    """`ZipformerFbankFeatureExtractor` + a BART-style tokenizer (``AutoTokenizer``).

    ``processor(audio=..., text=..., sampling_rate=...)``:

    - audio only: the feature extractor's outputs (``input_values``, ``attention_mask``);
    - text only: the tokenizer's outputs (its special tokens included, as the tokenizer adds them);
    - both: the features plus ``labels``, the decoder's targets: each text's tokens then ``</s>`` (UTS's AR
      target; the model puts ``<s>`` in front when it shifts them right), padded with -100 when
      ``return_tensors`` asks for a batch tensor.

    ``batch_decode`` / ``decode`` are the tokenizer's.
    """

    def __init__(self, feature_extractor, tokenizer):
        super().__init__(feature_extractor, tokenizer)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        # AutoProcessor sends every Zipformer folder here, taggers and encoders too, which keep a feature
        # extractor and no tokenizer; transformers' own message for that asks for sentencepiece.
        folder = str(pretrained_model_name_or_path)
        if os.path.isdir(folder) and not any(
            os.path.isfile(os.path.join(folder, n)) for n in _TOKENIZER_FILES
        ):
            raise ValueError(
                f"{folder} has no tokenizer, so no ZipformerProcessor: a Zipformer tagger or encoder keeps a "
                "feature extractor only (AutoFeatureExtractor.from_pretrained); a captioner is saved with "
                "its processor (processor.save_pretrained)"
            )
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def __call__(self, audio=None, text=None, sampling_rate=None, return_tensors=None, **kwargs):
        if audio is None and text is None:
            raise ValueError("ZipformerProcessor needs audio, text or both")
        if audio is None:
            return self.tokenizer(text, return_tensors=return_tensors, **kwargs)
        inputs = self.feature_extractor(
            audio, sampling_rate=sampling_rate, return_tensors=return_tensors, **kwargs
        )
        if text is not None:
            inputs["labels"] = self.caption_labels(text, return_tensors=return_tensors)
        return inputs

    def caption_labels(self, text, return_tensors=None):
        """Token ids of each text without special tokens, then ``</s>``; a batch tensor pads with -100."""
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the tokenizer has no eos_token: a caption target ends with one")
        ids = [row + [eos] for row in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        if return_tensors is None:
            return ids[0] if single else ids
        if return_tensors != "pt":
            raise ValueError(
                f"ZipformerProcessor returns labels as PyTorch tensors only, not {return_tensors!r}"
            )
        labels = torch.full((len(ids), max(map(len, ids))), -100, dtype=torch.long)
        for row, tokens in enumerate(ids):
            labels[row, : len(tokens)] = torch.tensor(tokens)
        return labels

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)
