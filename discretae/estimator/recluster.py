"""``objective_options={"embedding_kmeans": True}`` (``fit --embedding-kmeans``; off by
default): after a clustering fit, the code learns the k-means clusters of the
contrastive embedding.

The contrastive term trains an embedding (the ``h`` part of the encoder's output,
L2-normalised) in which augmented views of an image lie close and other images apart;
SCAN and the two-stage methods cluster such an embedding rather than trust a head
trained at the same time. Here, once the fit is done, k-means (k = the number of
codes, ``KMEANS_INITS`` seedings) clusters the embeddings of the training images, and
the model trains on toward those clusters for a short distillation, the ensemble's
(:mod:`discretae.estimator.ensemble`): its own objectives plus the cross-entropy of its
code against the clusters, renumbered to match its codes. So the one exported code (the
quantizer's, which the decoder reads and ``predict`` returns) carries them.

No labels enter. ``recluster_`` records how far the code agreed with the embedding's
clusters before (NMI) and after the distillation (its fidelity), and its steps. Why it
is off by default: README, Cluster (it raises digits' seed agreement, but lowers the
worst Fashion-MNIST seed).
"""

from __future__ import annotations

import numpy as np
import torch

from discretae.core import distributed
from discretae.estimator.ensemble import aligned
from discretae.estimator.fitted import FIT_RECORDS, INFER_BATCH
from discretae.estimator.heads import continued
from discretae.evaluation.metrics import nmi
from discretae.models.training import to_unit_float
from discretae.quantizers.kmeans import KMeans

KMEANS_INITS = 10
RECLUSTER_RULE = (
    "the code trained on toward k-means clusters of the contrastive embedding; no labels"
)


def embedding_clusters(embeddings: torch.Tensor, k: int, seed: int) -> np.ndarray:
    """(N, E) embeddings -> (N,) int64 k-means cluster ids in [0, k)."""
    km = KMeans(k, n_init=KMEANS_INITS, random_state=seed).fit(embeddings)
    return km.labels_.cpu().numpy().astype(np.int64)


def embedding_kmeans_on(objective_options: dict | None) -> bool:
    """The ``embedding_kmeans`` setting in these options, else its default."""
    from discretae.models.objectives import OBJECTIVE_DEFAULTS

    options = objective_options or {}
    return bool(options.get("embedding_kmeans", OBJECTIVE_DEFAULTS["embedding_kmeans"]))


def trains_contrastive(model) -> bool:
    """Whether ``model`` (an autoencoder, fitted or just built) trains the contrastive
    embedding the step clusters."""
    views = model.objectives
    return views is not None and views.weights["contrastive"] > 0


class ReclusterFit:
    """The estimator's reclustering step (a mixin of ``DiscreteAutoencoder``)."""

    def _embeddings(self, data: torch.Tensor) -> torch.Tensor:
        """data (N, *input_shape_) on CPU -> (N, E) contrastive embeddings, on the
        model's device."""
        return torch.cat([
            self.model_.embed(to_unit_float(data[i : i + INFER_BATCH].to(self.device_)))
            for i in range(0, data.shape[0], INFER_BATCH)
        ])  # fmt: skip

    def _can_recluster(self) -> bool:
        """A contrastive term trained, and a model whose code is the cluster."""
        return trains_contrastive(self.model_) and self._uses_codes_as_clusters()

    def recluster(self, X, y=None):
        """Train the fitted code on toward k-means clusters of its contrastive embedding
        of X (the module docstring): what ``objective_options={"embedding_kmeans": True}``
        does at the end of a fit, for a model fitted without it. X is typically the
        training data; ``labels_`` become X's clusters; k-means and the distillation are
        seeded by ``random_state`` (0 when None). Returns self.

        Raises DiscretaeError for a model without a contrastive embedding or whose
        clusters are k-means on the codes (``n_clusters``)."""
        from discretae.core.errors import DiscretaeError
        from discretae.estimator.fitted import as_images

        self._check_fitted()
        if not self._can_recluster():
            raise DiscretaeError(
                "recluster needs a clustering model trained with the contrastive objective "
                "whose code is the cluster (a gumbel or vq code, objectives auto)"
            )
        seed = 0 if self.random_state is None else int(self.random_state)
        self._recluster(self._at_working_size(as_images(X)), seed, force=True)
        return self

    def _recluster(self, data: torch.Tensor, seed: int, force: bool = False) -> None:
        """With the option on (or ``force``), train the code toward the embedding's
        clusters (module docstring); else ``recluster_`` stays None."""
        if not (force or (embedding_kmeans_on(self.objective_options) and self._can_recluster())):
            return
        k = int(self.model_.config["n_codes"])
        targets = torch.from_numpy(embedding_clusters(self._embeddings(data), k, seed))
        distributed.broadcast_(targets)  # under torchrun, rank 0's clusters for all
        targets = targets.numpy()
        codes = self._encode(data).numpy().astype(np.int64)  # the code is the cluster
        before = nmi(targets, codes)
        records = {k: getattr(self, f"{k}_") for k in FIT_RECORDS}  # _set_fitted forgets
        phase = "embedding clusters"
        cb = continued(self, phase)
        state = self._distill(self, data, aligned(targets, codes, k), seed, cb, phase=phase)
        self._set_fitted(state, self.input_shape_, self.device_)
        self._fit_clusters(self._encode(data), seed)
        for key, record in records.items():
            setattr(self, f"{key}_", record)
        self.recluster_ = {
            "before": before,
            "fidelity": nmi(targets, np.asarray(self.labels_)),
            "distill_steps": state.step,
            "rule": RECLUSTER_RULE,
        }
