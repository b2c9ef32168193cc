"""Publishing a UTS captioner: the repo carries the processor (fbank front end + the tokenizer the decoder
reads), the generation settings and the remote code, and a Hub user without the library gets the same
captions through ``trust_remote_code=True`` (AutoProcessor, AutoModelForSpeechSeq2Seq, AutoModel)."""

import json

import numpy as np
import torch
from remote_code_utils import run_without_library

from hf_audiorep.data.text_tokenizers import train_bpe_tokenizer
from hf_audiorep.hub import prepare_repo
from hf_audiorep.modeling import (
    ZipformerConfig,
    ZipformerFbankFeatureExtractor,
    ZipformerForConditionalGeneration,
    ZipformerProcessor,
    caption_decoder_config,
)

CAPTIONS = ["a dog barks in the rain", "an engine idles", "a man speaks over music", "rain falls"] * 4

_NO_LIBRARY_SCRIPT = """
import json, sys
import numpy as np
from transformers import AutoModel, AutoModelForSpeechSeq2Seq, AutoProcessor

repo, wave, out = sys.argv[2:5]
processor = AutoProcessor.from_pretrained(repo, trust_remote_code=True)
model = AutoModelForSpeechSeq2Seq.from_pretrained(repo, trust_remote_code=True).eval()
encoder = AutoModel.from_pretrained(repo, trust_remote_code=True)
inputs = processor(audio=np.load(wave), sampling_rate=16000, return_tensors="pt")
result = {
    "generate": model.generate(**inputs, max_new_tokens=6).tolist(),
    "parallel": model.parallel_generate(**inputs, max_new_tokens=6).tolist(),
    "types": [type(model).__name__, type(processor).__name__, type(encoder).__name__],
}
open(out, "w").write(json.dumps(result))
"""


def test_a_published_captioner_captions_the_same_without_the_library(tmp_path):
    tokenizer = train_bpe_tokenizer(CAPTIONS, vocab_size=300)
    config = ZipformerConfig.from_preset(
        "zipformer-small", decoder_config=caption_decoder_config(tokenizer, tie_word_embeddings=False)
    )
    torch.manual_seed(0)
    model = ZipformerForConditionalGeneration(config).eval()
    processor = ZipformerProcessor(ZipformerFbankFeatureExtractor(), tokenizer)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    repo = prepare_repo(tmp_path / "model", tmp_path / "repo", repo_id="someone/uts-captioner")

    names = {p.name for p in repo.iterdir()}
    assert {"generation_config.json", "processor_config.json", "tokenizer.json", "model.safetensors"} <= names
    assert {"modeling_zipformer_caption.py", "processing_zipformer.py"} <= names
    auto_map = json.loads((repo / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForSpeechSeq2Seq"].endswith("ZipformerForConditionalGeneration")

    wave = np.random.default_rng(0).normal(scale=0.1, size=16000).astype(np.float32)
    np.save(tmp_path / "wave.npy", wave)
    proc = run_without_library(
        _NO_LIBRARY_SCRIPT, str(repo), str(tmp_path / "wave.npy"), str(tmp_path / "out.json"), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["types"] == ["ZipformerForConditionalGeneration", "ZipformerProcessor", "ZipformerModel"]
    inputs = processor(audio=wave, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        assert result["generate"] == model.generate(**inputs, max_new_tokens=6).tolist()
        assert result["parallel"] == model.parallel_generate(**inputs, max_new_tokens=6).tolist()
    assert any(
        token not in (tokenizer.bos_token_id, tokenizer.eos_token_id) for token in result["generate"][0]
    )
