"""What every torch method repeats, written once: device, seeded random streams, the embedding
normaliser fitted on the training slides, and the parameter count of the trained network."""

from __future__ import annotations

import numpy as np
import torch

from flag_bench.methods.base import Method
from flag_bench.methods.common.inputs import EmbeddingNormalizer, require_embeddings, stack_embeddings

# The method's internal random streams, spawned from the cell seed (Method.seed_streams):
# network initialisation (and dropout), training batches and noise, validation sampling, test
# sampling. Separate streams keep e.g. the test samples independent of how long training ran.
INIT, TRAIN, VALIDATE, PREDICT = range(4)
N_STREAMS = 4


class TorchMethod(Method):
    """A Method whose fit trains ``self.net_`` on image-embedding conditions ``self.norm_``."""

    def stream_seed(self, stream: int) -> int:
        return self.seed_streams(N_STREAMS)[stream]

    def generator(self, stream: int) -> torch.Generator:
        """A CPU generator seeded for one of the streams above (CPU, so numbers do not depend
        on the accelerator's RNG)."""
        return torch.Generator(device="cpu").manual_seed(self.stream_seed(stream))

    def start_fit(self, train, cond_pca: int | None) -> tuple[torch.device, torch.Generator]:
        """Check inputs, seed initialisation, fit the condition normaliser (PCA components
        whitened); -> (device, the training generator)."""
        require_embeddings(train, self.card.name)
        torch.manual_seed(self.stream_seed(INIT))
        self.norm_ = EmbeddingNormalizer(stack_embeddings(train, np.float32), cond_pca, whiten=True,
                                         centre_before_svd=True)
        return torch.device(self.device), self.generator(TRAIN)

    def n_parameters(self) -> int | None:
        net = getattr(self, "net_", None)
        return None if net is None else int(sum(p.numel() for p in net.parameters()))
