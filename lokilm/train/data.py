"""The run's training data as a unit: a shuffled, resumable walk over the training windows of the shards."""

from __future__ import annotations

import sys

import torch

from lokilm.shards import ShuffledOrder, TokenWindows
from lokilm.train.units import Step, Unit


class TrainData(Unit):
    """The default batch source. Its cursor (`samples`, windows consumed) and its shuffle seed are its state, so a
    resumed run reads exactly the windows an unbroken one would; a rollback reshuffles (a new seed), so the run
    does not walk straight back into the batch that made the loss spike."""
    name = "data"

    def __init__(self, windows: TokenWindows, micro_batch_size: int, seed: int, device: torch.device, loss_fn):
        self.windows, self.micro, self.seed, self.device = windows, micro_batch_size, seed, device
        self.loss = loss_fn  # the model's next-token loss on one micro-batch
        self.samples, self.data_seed = 0, seed
        self._order = ShuffledOrder(len(windows), seed)

    def micro_batch(self, step: Step, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._order.seed != self.data_seed:
            self._order = ShuffledOrder(len(self.windows), self.data_seed)
        idx = self._order.take(self.samples + i * self.micro, self.micro)
        batch = torch.from_numpy(self.windows.batch(idx)).to(self.device, non_blocking=True)
        return batch[:, :-1], batch[:, 1:]

    def consumed(self, step: Step) -> None:
        self.samples += step.batch_size

    def state_dict(self) -> dict:
        return {"samples": self.samples, "data_seed": self.data_seed, "train_windows": len(self.windows)}

    def load_state_dict(self, state: dict) -> None:
        self.samples, self.data_seed = int(state["samples"]), int(state["data_seed"])
        # Shards re-tokenised between a halt and the resume (new inputs, another holdout) changed the window count,
        # and the cursor went on over a new shuffled order in silence: some windows read twice, others never. Said,
        # not refused (adding data to a run is a real use), as the mixture sampler does. Older checkpoints: unknown.
        from lokilm.parallel.dist import env_rank

        before = state.get("train_windows")
        if before is not None and int(before) != len(self.windows) and env_rank() == 0:  # rank 0 says it for all
            print(f"loki: note: the training shards changed since the checkpoint ({int(before)} -> {len(self.windows)} "
                  f"train windows); the run goes on from window {self.samples} in a new shuffled order, so some "
                  "windows may repeat and others be skipped", file=sys.stderr)

    def after_rollback(self, count: int) -> None:
        self.data_seed = self.seed + 1000 * count
