"""Pair every labelled batch with a batch of unlabelled clips, for semi-supervised training.

The unlabelled batches carry waveforms and lengths only: their labels are dropped here, so no
training step downstream can use them, whatever the unlabelled source holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from .ontology import LabelVocabulary


class SemiSupervisedBatches:
    """A batch source (the ``TrainLoop`` contract) over a labelled and an unlabelled ``AudioStream``.

    Epochs follow the labelled stream; the unlabelled stream cycles through its own epochs as
    needed. Both positions are part of ``state_dict`` so a resumed run continues exactly.
    """

    def __init__(self, labeled, unlabeled):
        self.labeled = labeled
        self.unlabeled = unlabeled
        self._unlabeled_iter: Iterator | None = None

    @property
    def epoch(self) -> int:
        return self.labeled.epoch

    def set_epoch(self, epoch: int) -> None:
        self.labeled.set_epoch(epoch)

    def _next_unlabeled(self) -> dict:
        for _ in range(2):  # at most one epoch boundary per request
            if self._unlabeled_iter is None:
                self._unlabeled_iter = iter(self.unlabeled)
            try:
                return next(self._unlabeled_iter)
            except StopIteration:
                self._unlabeled_iter = None
                self.unlabeled.set_epoch(self.unlabeled.epoch + 1)
        raise ValueError("the unlabelled stream produced no batch in a whole epoch")

    def __iter__(self) -> Iterator[dict]:
        try:
            for batch in self.labeled:
                extra = self._next_unlabeled()
                yield {
                    **batch,
                    "unlabeled_waveforms": extra["waveforms"],
                    "unlabeled_lengths": extra["lengths"],
                }
        except GeneratorExit:
            # Training stopped mid-epoch: close the unlabelled iterator too, so its prefetch thread stops
            # now rather than decoding on until the program exits. Its committed position is kept, so a
            # new iteration (or a resumed run) continues the unlabelled stream where it was.
            self.close_unlabeled()
            raise

    def close_unlabeled(self) -> None:
        if self._unlabeled_iter is not None:
            # A generator (AudioStream) is closed so its prefetch thread stops; a plain iterator (a list
            # of batches in tests, any iterable source) has nothing to close.
            close = getattr(self._unlabeled_iter, "close", None)
            if close is not None:
                close()
            self._unlabeled_iter = None

    def state_dict(self) -> dict:
        return {"labeled": self.labeled.state_dict(), "unlabeled": self.unlabeled.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.labeled.load_state_dict(state["labeled"])
        self.unlabeled.load_state_dict(state["unlabeled"])
        self._unlabeled_iter = None


def split_labeled(source, num_labeled: int):
    """(first ``num_labeled`` records, the rest) of an ``AudioSource``: a small labelled set and the
    remainder to use as unlabelled audio, as in the semi-supervised AudioSet setting."""
    if num_labeled <= 0:
        raise ValueError(f"num_labeled must be positive, got {num_labeled}")
    dataset = source.dataset
    if hasattr(dataset, "select"):  # map-style
        if num_labeled >= len(dataset):
            raise ValueError(
                f"num_labeled={num_labeled} but the training split has only {len(dataset)} clips"
            )
        head, rest = dataset.select(range(num_labeled)), dataset.select(range(num_labeled, len(dataset)))
    else:  # a stream: the first records are the labelled set
        head, rest = dataset.take(num_labeled), dataset.skip(num_labeled)
    return replace(source, dataset=head), replace(source, dataset=rest)


def as_unlabeled(source, vocabulary: LabelVocabulary):
    """The same audio with its labels hidden: no label column is read, whatever the dataset holds
    (another vocabulary, free text, nothing), and targets are all-zero vectors over ``vocabulary``
    (the run's)."""
    return replace(source, label_column=None, vocabulary=vocabulary)
