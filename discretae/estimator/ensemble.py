"""``ensemble=N``: fit N seeds of a clustering model and keep their consensus, in one model.

A clustering fit depends on its seed: on Fashion-MNIST the cluster ids of two seeds of
the recipe agree to an NMI of about 0.8, and one seed in three lands well below the
others. An ensemble fits the members with seeds s, s+1, ..., s+N-1 (s: the estimator's
seed), then

1. **consensus**: k-means (k = the number of codes) on every image's concatenated
   one-hot member codes, so two images share a consensus cluster when most members put
   them together (the Hamming form of co-association consensus; a member's outlying
   split is outvoted);
2. **kept member**: the member whose own clusters agree best with the consensus (NMI);
3. **distillation**: that member trains on for ``DISTILL_STEPS`` more steps, its usual
   objectives plus the cross-entropy of its code against the consensus cluster
   (renumbered to match its own codes as far as they can), so that the one model it
   becomes encodes new images into the consensus clusters.

No labels enter; the fitted model is an ordinary model, with ``ensemble_`` saying what
happened (member seeds and their agreement, the kept member, how far the distilled model
agrees with the consensus). The fit takes about N + DISTILL_STEPS / (steps of one
member) times one member's time.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import torch

from discretae.core import distributed
from discretae.core.errors import DiscretaeError
from discretae.estimator.fitted import as_images
from discretae.evaluation.metrics import contingency, hungarian_match, nmi
from discretae.models.training import make_train_state, steps_per_epoch, train
from discretae.quantizers.kmeans import KMeans

# Steps of the distillation, its learning rate (a cosine to 0 from there) and the weight
# of its cross-entropy (models.autoencoder.CONSENSUS_WEIGHT), chosen without labels: by
# the distilled model's NMI to the consensus, digits, the recipe's members 0-2 (kept
# member 0.991 before): lr 5e-4, weight 1, 300 steps 0.9955; lr 2e-4 0.9940; lr 1e-3
# 0.9921; weight 5 0.9970 (kept); 1000 steps 0.9985 at 3.5 times the time.
DISTILL_STEPS = 300
DISTILL_LR = 5e-4
# and at most this share of a member's own steps (a short fit gets a short distillation)
DISTILL_SHARE = 0.15
CONSENSUS_INITS = 10


def consensus_labels(parts: list[np.ndarray], k: int, seed: int) -> np.ndarray:
    """N members' cluster ids (each (n,), in [0, k)) -> (n,) consensus ids in [0, k):
    k-means with ``CONSENSUS_INITS`` seedings on the concatenated one-hot ids."""
    onehot = np.zeros((len(parts[0]), len(parts) * k), dtype=np.float32)
    rows = np.arange(len(parts[0]))
    for i, p in enumerate(parts):
        onehot[rows, i * k + np.asarray(p, dtype=np.int64)] = 1.0
    km = KMeans(k, n_init=CONSENSUS_INITS, random_state=seed)
    return np.asarray(km.fit(onehot).labels_, dtype=np.int64)


def aligned(consensus: np.ndarray, codes: np.ndarray, k: int) -> np.ndarray:
    """``consensus`` renumbered so that its clusters carry the codes in [0, k) they share
    the most images with (one to one; a cluster left over takes a code left over)."""
    table, clusters, used = contingency(consensus, codes)
    rows, cols = hungarian_match(table)
    mapping = {int(clusters[c]): int(used[u]) for c, u in zip(rows, cols, strict=True)}
    free = iter(sorted(set(range(k)) - set(mapping.values())))
    for c in np.unique(consensus):
        if int(c) not in mapping:
            mapping[int(c)] = next(free)
    lookup = np.zeros(k, dtype=np.int64)
    for c, code in mapping.items():
        lookup[c] = code
    return lookup[consensus]


def distill_epochs(steps: int, member_epochs: int) -> int:
    """Epochs of about ``DISTILL_STEPS`` steps, at most ``DISTILL_SHARE`` of a member's
    ``member_epochs``, for ``steps`` steps an epoch (at least 1)."""
    wanted = min(DISTILL_STEPS, DISTILL_SHARE * member_epochs * steps)
    return max(1, round(wanted / max(steps, 1)))


class _Progress:
    """The members' and the distillation's step events as one fit: epochs counted over
    the whole ensemble, with a ``phase`` ("member i/N", "consensus")."""

    def __init__(self, callback, members: int) -> None:
        self.callback, self.members = callback, members
        self.offset, self.phase, self.epochs = 0, "", 0

    def total(self, event: dict) -> int:
        steps = int(event["steps_per_epoch"])
        return self.members * self.epochs + distill_epochs(steps, self.epochs)

    def start(self, phase: str, offset: int) -> None:
        self.phase, self.offset = phase, offset

    def __call__(self, event: dict) -> None:
        if self.phase.startswith("member"):
            self.epochs = int(event["epochs"])
        out = {**event, "epoch": self.offset + int(event["epoch"]), "phase": self.phase}
        out["epochs"] = self.total(event)
        self.callback(out)


class EnsembleFit:
    """The estimator's ``ensemble`` fit (a mixin of ``DiscreteAutoencoder``)."""

    def _check_ensemble(self, checkpoint_every: int, resume) -> None:
        """Refuse what an ensemble fit cannot do, before any work."""
        n = int(self.ensemble)
        if resume is not None or checkpoint_every:
            raise DiscretaeError(
                f"ensemble={n} keeps no checkpoints, so it cannot resume or checkpoint "
                "every few steps; fit the members one by one for that"
            )
        if distributed.world_size() > 1:
            raise DiscretaeError(f"ensemble={n} runs in one process, not under torchrun")
        uses_codes = self.model == "gumbel" and self.latent == "global"
        groups = (self.quantizer_options or {}).get("groups", 1)
        if not uses_codes or groups != 1 or self.n_clusters not in (None, self.n_codes):
            raise DiscretaeError(
                f"ensemble={n} needs a model whose code is the cluster: model 'gumbel', "
                "latent 'global', one group and n_clusters left at n_codes"
            )

    def _member(self, seed: int):
        params = {**self.get_params(deep=False), "callback": None, "ensemble": 1}
        return type(self)(**{**params, "random_state": seed})

    def _fit_ensemble(self, X, checkpoint_every: int, resume):
        """Fit ``ensemble`` members and keep their distilled consensus (module docstring)."""
        self._check_ensemble(checkpoint_every, resume)
        n, seed = int(self.ensemble), self._fit_seed(None)
        progress = _Progress(self.callback, n) if self.callback is not None else None
        members = []
        for i in range(n):
            member = self._member(seed + i)
            if progress is not None:
                progress.start(f"member {i + 1}/{n}", i * progress.epochs)
                member.set_params(callback=progress)
            members.append(member.fit(X))
        return self._consensus_of(members, X, seed, progress)

    def fit_consensus(self, members, X):
        """Keep the distilled consensus of ``members``, clustering models fitted on X
        (for example in parallel processes, then loaded): steps 1-3 of the module
        docstring, seeded with this estimator's seed. -> self."""
        self._check_ensemble(0, None)
        members = list(members)
        if len(members) < 2:
            raise DiscretaeError(f"a consensus needs at least 2 members, got {len(members)}")
        config = members[0].model_.config
        if any(m.model_.config != config for m in members) or config["n_codes"] != self.n_codes:
            raise DiscretaeError(
                f"the members must be the same kind of model, with n_codes={self.n_codes}"
            )
        progress = _Progress(self.callback, 0) if self.callback is not None else None
        return self._consensus_of(members, X, self._fit_seed(None), progress)

    def _consensus_of(self, members, X, seed: int, progress):
        """Steps 1-3 of the module docstring on fitted ``members`` of X."""
        k = int(self.n_codes)
        data = self._at_working_size(as_images(X))
        parts = [m.predict(X) for m in members]
        consensus = consensus_labels(parts, k, seed)
        to_consensus = [nmi(consensus, p) for p in parts]
        kept = int(np.argmax(to_consensus))
        member = members[kept]
        if progress is not None:
            progress.epochs = len(member.history_)
            progress.start("consensus", progress.members * progress.epochs)
        targets = aligned(consensus, parts[kept], k)
        state = self._distill(member, data, targets, seed, progress)
        self._set_fitted(state, member.input_shape_, member.device_)
        self._fit_clusters(self._encode(data), seed)
        self.mirror_ = getattr(member, "mirror_", None)
        self.ensemble_ = {
            "members": len(members),
            "seeds": [m.random_state for m in members],
            "member_agreement": [nmi(a, b) for a, b in combinations(parts, 2)],
            "to_consensus": to_consensus,
            "kept": kept,
            "distill_steps": state.step,
            "fidelity": nmi(consensus, self.labels_),
            "rule": "kept: the member closest to the consensus (NMI); no labels",
        }
        return self

    def _distill(self, member, data, targets, seed: int, callback, phase: str = "consensus"):
        """Train the kept member on toward ``targets``; -> its train state (its history
        entries marked ``phase``)."""
        model = member.model_
        steps = steps_per_epoch(data.shape[0], int(self.batch_size))
        state = make_train_state(model, lr=DISTILL_LR, seed=seed)
        cuda = [member.device_.index or 0] if member.device_.type == "cuda" else []
        before = list(member.history_)
        epochs = distill_epochs(steps, len(before))
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            model.low_precision = self.training_dtype(model, member.device_)
            try:
                train(
                    state, data, epochs=epochs, batch_size=int(self.batch_size),
                    device=member.device_, callback=callback, lr_schedule="cosine",
                    targets=torch.from_numpy(targets),
                )  # fmt: skip
            finally:
                model.low_precision = None
        for h in state.history:
            h.update(epoch=len(before) + h["epoch"], phase=phase)
        state.history = before + state.history
        return state
