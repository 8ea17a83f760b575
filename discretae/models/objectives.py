"""Objectives that make a discrete code capture what two views of an image share.

All take the outputs for two augmented views of the same batch, row i of one view
paired with row i of the other; the other rows of the batch are the negatives.

- ``mutual_information_loss`` (IIC): minus the mutual information between the codes of
  the two views, from the (K, K) joint of their code probabilities. It is high when each
  view's code is confident and both agree, and the marginal uses all codes.
- ``contrastive_loss`` (InfoNCE, as in CPC and SimCLR): a continuous embedding of one
  view must pick out the other view of the same image among the batch (under DDP,
  among this rank's share of it).
- ``self_label_loss`` (the self-labelling step of SCAN): where one view's code is
  confident, that code is the class target of the other view (cross-entropy, each
  class weighed by the inverse of its share of the confident rows).
- ``neighbour_loss`` (the neighbour-consistency step of SCAN): an image and one of its
  nearest neighbours in the contrastive embedding (mined by
  :mod:`discretae.models.neighbours`) should get the same code.
- ``CodeCritic``: the discriminator objective. A critic scores (image embedding, code)
  pairs; an image with the code of its other view is a positive, with another image's
  code a negative; encoder and critic both minimise the critic's logistic loss, which
  maximises a Jensen-Shannon bound on the mutual information between image and code.

With ``heads`` H > 1 (IIC's several heads), H - 1 more code heads over the same content
latent, each its own codebook, train with the code terms (mi, selflabel, neighbours) as
the quantizer's code does; after the fit the estimator keeps the head the others agree
with most (:mod:`discretae.estimator.heads`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from discretae.core.checks import check_int
from discretae.core.errors import DiscretaeError
from discretae.kernels import nearest_code
from discretae.models.augment import AugmentConfig
from discretae.models.neighbours import NeighbourMining
from discretae.quantizers.gumbel import code_logits


def mutual_information_loss(
    p1: torch.Tensor, p2: torch.Tensor, *, entropy_weight: float = 1.0
) -> torch.Tensor:
    """p1, p2: (B, K) code probabilities of two views -> scalar, minus I(c1; c2).

    The joint is the symmetrised mean outer product over the global batch (all ranks
    under DDP). ``entropy_weight`` > 1 weighs the marginal entropies more, pushing harder
    against collapse onto few codes (the lambda of IIC).
    """
    joint = ((_global_joint(p1, p2) + _global_joint(p2, p1)) / 2).clamp_min(1e-8)
    joint = joint / joint.sum()
    pi, pj = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
    return -(joint * (joint.log() - entropy_weight * (pi.log() + pj.log()))).sum()


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, *, temperature: float = 0.5) -> torch.Tensor:
    """a, b: (B, E) embeddings of two views -> scalar NT-Xent (SimCLR's InfoNCE).

    Each of the 2B rows must find its partner among the other 2B - 1 rows by cosine
    similarity divided by ``temperature``.
    """
    z = F.normalize(torch.cat([a, b]).float(), dim=1)
    n = a.shape[0]
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, target)


def self_label_loss(l1: torch.Tensor, l2: torch.Tensor, *, confidence: float) -> torch.Tensor:
    """l1, l2: (B, K) code logits of two views -> scalar cross-entropy of each view
    against the other view's code, over the rows where that code's probability exceeds
    ``confidence`` (0 when there are none). A class's rows weigh the inverse of its share
    of the confident rows, so that large clusters do not swallow small ones.
    """
    total = l1.new_zeros((), dtype=torch.float32)
    for src, dst in ((l1, l2), (l2, l1)):
        conf, target = src.detach().float().softmax(-1).max(-1)
        keep = (conf > confidence).float()
        counts = keep.new_zeros(src.shape[-1]).scatter_add_(0, target, keep)
        # the weighted mean of cross_entropy(weight=): rows of a class weigh 1 / its count;
        # masked rather than indexed, so there is no sync with the GPU and no empty case
        weight = keep / counts.clamp_min(1)[target]
        ce = F.cross_entropy(dst.float(), target, reduction="none")
        total = total + (weight * ce).sum() / weight.sum().clamp_min(1e-12)
    return total / 2


def neighbour_loss(
    p: torch.Tensor, pn: torch.Tensor, *, entropy_weight: float = 0.0
) -> torch.Tensor:
    """p (B, K): code probabilities of images; pn (B, K): those of one neighbour of each
    -> scalar, SCAN's consistency: minus the mean log of the dot products <p_i, pn_i>,
    both sides with gradient. ``entropy_weight`` > 0 subtracts that times the entropy of
    the mean of ``p`` over the global batch (SCAN's guard against collapse; the MI term's
    marginal entropies guard too, so it is off by default)."""
    loss = -(p.float() * pn.float()).sum(-1).clamp_min(1e-8).log().mean()
    if entropy_weight:
        marginal = _global_mean(p.float())
        loss = loss + entropy_weight * (marginal * marginal.clamp_min(1e-8).log()).sum()
    return loss


class CodeCritic(nn.Module):
    """Scores how well a code fits an image embedding: a bilinear form, (B, E) x (B, K) -> (B,).

    ``loss(h, y)`` pairs row i of ``h`` with row i of ``y`` (positives) and with a
    shifted row (negatives), and returns the logistic loss of telling them apart.
    """

    def __init__(self, embed_dim: int, n_codes: int) -> None:
        super().__init__()
        self.proj = nn.Linear(embed_dim, n_codes)

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (self.proj(h.float()) * y.float()).sum(-1)

    def loss(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """h: (B, E) embeddings of one view; y: (B, K) codes (one-hot or soft) of the other."""
        n = h.shape[0]
        # drawn on the CPU: a shift drawn on the GPU would cost a sync every step
        shift = int(torch.randint(1, n, ())) if n > 1 else 0
        pos = self(h, y)
        neg = self(h, y.roll(shift, 0))
        return F.softplus(-pos).mean() + F.softplus(neg).mean()


# the weighed two-view terms, and every name ``objectives=`` takes
VIEW_TERMS = ("mi", "contrastive", "critic", "selflabel", "neighbours")
OBJECTIVES = (*VIEW_TERMS, "style")

# The settings of the view objectives; weights of 0 turn a term off.
OBJECTIVE_DEFAULTS = {
    "mi": 1.0,
    "contrastive": 1.0,
    "critic": 0.0,
    "selflabel": 0.0,
    "neighbours": 0.0,
    "entropy_weight": 1.5,
    "overcluster": 50,
    "temperature": 0.5,
    "confidence": 0.99,
    "embed_dim": 64,
    # neighbour mining (see discretae.models.neighbours): k, the fraction of the steps
    # before the first mining, epochs between minings, and SCAN's entropy weight. k by
    # seed agreement on digits (recipe + neighbours, 2000 steps, seeds 0-2): k=10 0.943,
    # k=5 0.939 (the recipe without the term 0.939)
    "n_neighbours": 10,
    "neighbour_start": 0.25,
    "neighbour_every": 1,
    "neighbour_entropy": 0.0,
    # code heads trained at once (1: the quantizer's alone); see the module docstring
    "heads": 1,
    # after the fit, the code trains toward k-means clusters of the contrastive
    # embedding (discretae.estimator.recluster); the estimator's step, not a term
    "embedding_kmeans": False,
    "augment": {},
}


def objective_settings(given: dict | None) -> dict:
    """None or {} -> {} (reconstruction alone); else the defaults updated by ``given``,
    checked (DiscretaeError naming the setting), with ``augment`` as a full dict."""
    if not given:
        return {}
    unknown = set(given) - set(OBJECTIVE_DEFAULTS)
    if unknown:
        raise DiscretaeError(
            f"unknown objective settings {sorted(unknown)}; valid: {', '.join(OBJECTIVE_DEFAULTS)}"
        )
    out = {**OBJECTIVE_DEFAULTS, **given}
    for key in (*VIEW_TERMS, *_NUMBERS):
        _check_number(key, out[key])
    check_int("overcluster", out["overcluster"], low=0)
    for key in ("embed_dim", "n_neighbours", "neighbour_every", "heads"):
        check_int(key, out[key])
    if not isinstance(on := out["embedding_kmeans"], bool):
        raise DiscretaeError(f"objective setting embedding_kmeans must be true or false: {on!r}")
    if not any(out[k] for k in VIEW_TERMS):
        raise DiscretaeError(
            f"view objectives need a nonzero weight for one of {', '.join(VIEW_TERMS)}"
        )
    out["augment"] = AugmentConfig(**dict(out["augment"] or {})).to_dict()
    return out


_NUMBERS = ("entropy_weight", "temperature", "confidence", "neighbour_start", "neighbour_entropy")


def _check_number(key: str, v) -> None:
    """A finite number >= 0; the temperature > 0, the confidence in (0, 1), the
    neighbour start in [0, 1)."""
    if not (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)):
        raise DiscretaeError(f"objective setting {key} must be a number, got {v!r}")
    if v < 0 or (key == "temperature" and v == 0):
        raise DiscretaeError(f"objective setting {key} must be > 0, got {v!r}")
    if key == "confidence" and not 0 < v < 1:
        raise DiscretaeError(f"objective setting confidence must be in (0, 1), got {v!r}")
    if key == "neighbour_start" and not v < 1:
        raise DiscretaeError(f"objective setting neighbour_start must be in [0, 1), got {v!r}")


def _global_mean(p: torch.Tensor) -> torch.Tensor:
    """(B, K) -> (K,) mean over the global batch (all DDP ranks)."""
    from discretae.core import distributed

    if not distributed.is_dist():
        return p.mean(0)
    total = distributed.global_sum(torch.cat([p.sum(0), p.new_tensor([p.shape[0]])]))
    return total[:-1] / total[-1]


def _global_joint(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """(B, K) x (B, K) -> (K, K) mean outer product over the global batch (all DDP ranks)."""
    from discretae.core import distributed

    joint = p1.float().t() @ p2.float()
    if not distributed.is_dist():
        return joint / p1.shape[0]
    flat = torch.cat([joint.reshape(-1), joint.new_tensor([p1.shape[0]])])
    total = distributed.global_sum(flat)
    return (total[:-1] / total[-1]).view_as(joint)


class ViewObjectives(nn.Module):
    """The two-view objectives of a model, weighed and summed.

    Args:
        n_codes: K of the code whose probabilities the MI term pairs up.
        latent_dim: D of the content latent (input of the over-clustering head).
        embed_dim: E of the continuous embedding the contrastive term and the critic use.
        mi, contrastive, critic, selflabel, neighbours: weights of the terms (0 turns
            one off).
        entropy_weight: IIC's lambda.
        overcluster: codes of an auxiliary head trained with the same MI term (0: none);
            it gives the encoder finer structure to learn from and is not used to encode.
        temperature: of the contrastive term.
        confidence: code probability above which self-labelling takes a view's code as
            the other view's target.
        n_neighbours, neighbour_start, neighbour_every: the neighbour mining (``mining``,
            a :class:`~discretae.models.neighbours.NeighbourMining`; None when the
            neighbours term is off): k, the fraction of the steps before the first
            mining, and epochs between minings.
        neighbour_entropy: SCAN's entropy weight in the neighbours term.
        heads: code heads in all, the quantizer's included; the H - 1 others are
            ``extra_heads`` (H - 1, K, D), with the quantizer's form of logits.
    """

    def __init__(
        self,
        n_codes: int,
        latent_dim: int,
        embed_dim: int,
        *,
        mi: float,
        contrastive: float,
        critic: float,
        selflabel: float,
        neighbours: float,
        entropy_weight: float,
        overcluster: int,
        temperature: float,
        confidence: float,
        n_neighbours: int,
        neighbour_start: float,
        neighbour_every: int,
        neighbour_entropy: float,
        heads: int = 1,
    ) -> None:
        super().__init__()
        self.weights = {
            "mi": mi,
            "contrastive": contrastive,
            "critic": critic,
            "selflabel": selflabel,
            "neighbours": neighbours,
        }
        self.entropy_weight, self.temperature = entropy_weight, temperature
        self.confidence = confidence
        self.over = nn.Linear(latent_dim, overcluster) if overcluster and mi else None
        self.critic = CodeCritic(embed_dim, n_codes) if critic else None
        self.neighbour_entropy = neighbour_entropy
        mining = NeighbourMining(n_neighbours, neighbour_start, neighbour_every)
        self.mining = mining if neighbours else None
        self.extra_heads = None  # drawn only when asked for: one head draws nothing
        if heads > 1:  # unit-norm-scale rows, as the Gumbel quantizer's codebook
            extra = torch.randn(heads - 1, n_codes, latent_dim) / latent_dim**0.5
            self.extra_heads = nn.Parameter(extra)

    @classmethod
    def from_settings(cls, settings: dict, n_codes: int, latent_dim: int) -> ViewObjectives:
        """From the checked settings of :func:`objective_settings` (augment is not ours)."""
        skip = ("embed_dim", "augment", "embedding_kmeans")
        kept = {k: v for k, v in settings.items() if k not in skip}
        return cls(n_codes, latent_dim, settings["embed_dim"], **kept)

    def _mi(self, p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
        return mutual_information_loss(p1, p2, entropy_weight=self.entropy_weight)

    def head_logits(self, z: torch.Tensor) -> torch.Tensor:
        """z (T, D) -> (H - 1, T, K) float32 logits of the extra heads: minus the squared
        distances to their codebooks, as the quantizer's."""
        zg = z.float().unsqueeze(1).expand(-1, self.extra_heads.shape[0], -1)
        return code_logits(zg, self.extra_heads).transpose(0, 1)

    @torch.no_grad()
    def head_codes(self, z: torch.Tensor) -> torch.Tensor:
        """z (T, D) -> (T, H - 1) the extra heads' codes: their nearest rows, the same
        exact search the quantizer encodes with."""
        z = z.detach().float()
        return torch.stack([nearest_code(z, cb.detach())[0] for cb in self.extra_heads], 1)

    def _code_terms(self, logits: torch.Tensor, nb_logits: torch.Tensor | None) -> dict:
        """The terms of one code head: mi (without the over-clustering head), selflabel
        and neighbours, unweighted."""
        b = logits.shape[0] // 2
        parts: dict[str, torch.Tensor] = {}
        p = logits.float().softmax(-1)
        if self.weights["mi"]:
            parts["mi"] = self._mi(p[:b], p[b:])
        if self.weights["selflabel"]:
            parts["selflabel"] = self_label_loss(logits[:b], logits[b:], confidence=self.confidence)
        if self.weights["neighbours"] and nb_logits is not None:
            pn = nb_logits.float().softmax(-1)
            w = self.neighbour_entropy
            parts["neighbours"] = (
                neighbour_loss(p[:b], pn, entropy_weight=w)
                + neighbour_loss(p[b:], pn, entropy_weight=w)
            ) / 2
        return parts

    def _weighted(self, parts: dict) -> torch.Tensor:
        return sum(self.weights[k] * v for k, v in parts.items())

    def forward(
        self,
        logits: torch.Tensor,
        z: torch.Tensor,
        h: torch.Tensor,
        neighbour_logits: torch.Tensor | None = None,
        neighbour_z: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict]:
        """logits (2B, K), content latents z (2B, D), embeddings h (2B, E); rows [0, B) are
        view 1 and [B, 2B) view 2 of the same images -> (weighted sum, {term: value}).
        ``neighbour_logits`` (B, K) and ``neighbour_z`` (B, D): the codes and latent of a
        neighbour of each image, for the neighbours term (None: the term is left out, as
        before the first mining). With extra heads, "heads" is their weighted terms'
        sum."""
        b = logits.shape[0] // 2
        parts = self._code_terms(logits, neighbour_logits)
        if "mi" in parts and self.over is not None:
            po = self.over(z.float()).softmax(-1)
            parts["mi"] = parts["mi"] + self._mi(po[:b], po[b:])
        if self.weights["contrastive"]:
            parts["contrastive"] = contrastive_loss(h[:b], h[b:], temperature=self.temperature)
        if self.critic is not None:
            # each view's embedding against the other view's code probabilities
            p = logits.float().softmax(-1)
            parts["critic"] = (self.critic.loss(h[:b], p[b:]) + self.critic.loss(h[b:], p[:b])) / 2
        parts = {k: parts[k] for k in VIEW_TERMS if k in parts}  # the sum's usual order
        total = self._weighted(parts)
        if self.extra_heads is not None:
            nb = self.head_logits(neighbour_z) if neighbour_logits is not None else None
            heads = sum(
                self._weighted(self._code_terms(lg, None if nb is None else nb[i]))
                for i, lg in enumerate(self.head_logits(z))
            )
            parts["heads"] = heads
            total = total + heads
        return total, {k: v.detach() for k, v in parts.items()}
