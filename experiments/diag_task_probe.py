"""Why does a linear probe of one attribute task score below its trivial baseline? Embeds the corpus's train
and test clips once with a saved encoder, then, for one task of ``corpus_probe_tasks``: the class counts of
both splits, the probe's test accuracy and confusion matrix at several regularisation strengths, and 5-fold
cross-validated accuracy on the train split (an encoder whose features carry nothing about the task scores
about chance there; a probe that overfits few clips scores below it on both).

    OMP_NUM_THREADS=1 python experiments/diag_task_probe.py outputs/uts_label_quality/tags_k100_s0 \\
        --task music_tempo --clip_seconds 3
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from transformers import AutoFeatureExtractor, AutoModel

import hf_audiorep  # noqa: F401  (registers the library's models)
from hf_audiorep.data.embedded import load_embedded_corpus
from hf_audiorep.evaluation import corpus_probe_tasks
from hf_audiorep.evaluation.task_probes import _embed_split, _task_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a saved model directory (its encoder is probed)")
    parser.add_argument("--task", default="music_tempo", help="an attribute task of the corpus")
    parser.add_argument("--clip_seconds", type=float, default=3.0, help="the corpus's clip length")
    parser.add_argument("--C", type=float, nargs="+", default=[0.001, 0.01, 0.1, 1.0], help="probe strengths")
    args = parser.parse_args()
    model = AutoModel.from_pretrained(args.model).eval()
    feature_extractor = AutoFeatureExtractor.from_pretrained(args.model)
    corpus = load_embedded_corpus(seed=0, clip_seconds=args.clip_seconds)
    (task,) = corpus_probe_tasks([args.task])
    data = {}
    for role in ("train", "test"):
        with torch.no_grad():
            X, Y, index = _embed_split(
                model,
                feature_extractor,
                corpus[role],
                batch_size=16,
                clip_seconds=args.clip_seconds,
                limit=None,
                device=None,
            )
        data[role] = _task_data(task, corpus[role], X, Y, index)
    (train_X, train_y), (test_X, test_y) = data["train"], data["test"]
    classes = int(max(train_y.max(), test_y.max())) + 1
    print(f"{args.task}: {len(train_y)} train / {len(test_y)} test clips, {train_X.shape[1]} features")
    print("class counts train", np.bincount(train_y, minlength=classes).tolist())
    print("class counts test ", np.bincount(test_y, minlength=classes).tolist())
    majority = np.bincount(train_y, minlength=classes).argmax()
    print(f"majority (train) class {majority}: test accuracy {np.mean(test_y == majority):.3f}")
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    for C in args.C:
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000))
        cv = cross_val_score(probe, train_X, train_y, cv=folds).mean()
        probe.fit(train_X, train_y)
        predicted = probe.predict(test_X)
        print(
            f"C={C:g}: train accuracy {probe.score(train_X, train_y):.3f}, 5-fold CV on train {cv:.3f}, "
            f"test {np.mean(predicted == test_y):.3f}; confusion (rows true, columns predicted)\n"
            f"{confusion_matrix(test_y, predicted, labels=range(classes))}"
        )


if __name__ == "__main__":
    main()
