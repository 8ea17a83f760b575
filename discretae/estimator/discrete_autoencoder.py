"""``DiscreteAutoencoder``: the scikit-learn-style estimator over the discrete autoencoders.

``fit`` trains on images or flat vectors (never on labels), ``transform`` gives codes,
``predict`` cluster ids, ``inverse_transform`` images, and ``save``/``load`` one
.safetensors file.

Cluster ids: for a global vq or gumbel latent with one group, the code is the cluster id
(``n_clusters_ = n_codes``). Otherwise (binary codes, grid codes, grouped Gumbel, or an
``n_clusters`` other than ``n_codes``) a ``KMeans`` runs on ``codes_to_latent(codes)``
flattened per input: bits as 0/1 floats, codebook vectors for categories. Flattening
keeps where each code sits in the grid (a histogram of codes would lose the layout that
tells a 6 from a 9) and lets similar codebook vectors count as close.
"""

from __future__ import annotations

import math

import numpy as np
import sklearn.exceptions
import torch
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.utils import Tags

from discretae._version import __version__
from discretae.core import distributed
from discretae.core.devices import training_dtype
from discretae.core.errors import DiscretaeError, NotFittedError
from discretae.core.files import check_writable
from discretae.core.serialization import read_model_file, write_model_file
from discretae.data.framing import frame_tensor
from discretae.estimator.ensemble import EnsembleFit
from discretae.estimator.fitted import (
    FIT_RECORDS,
    FittedCodes,
    as_images,
    attach_fitted,
    framing_from_params,
    resolve_device,
    stored_params,
)
from discretae.estimator.heads import HeadsFit
from discretae.estimator.parameters import Integer, check_parameters
from discretae.estimator.recipe import (
    DEFAULT_EPOCHS,
    RECIPE_LR,
    RECIPE_LR_SCHEDULE,
    grid_epochs,
    objective_config,
    objective_names,
    recipe_applies,
    recipe_decoder,
    recipe_epochs,
)
from discretae.estimator.recluster import ReclusterFit
from discretae.estimator.resume import (
    CheckpointWriter,
    check_same_data,
    check_same_settings,
    checkpoint_params,
    data_fingerprint,
)
from discretae.models.autoencoder import build_autoencoder
from discretae.models.checkpoint import (
    Checkpoint,
    read_checkpoint,
    restore_rng,
    restore_train_state,
)
from discretae.models.memory import fit_bytes
from discretae.models.mirror import with_mirror_rule
from discretae.models.training import (
    TrainingDiverged,
    TrainState,
    make_train_state,
    steps_per_epoch,
    train,
)


class EstimatorNotFittedError(NotFittedError, sklearn.exceptions.NotFittedError):
    """Use before ``fit``: both ``except discretae.NotFittedError`` and scikit-learn's
    ``except sklearn.exceptions.NotFittedError`` catch it. (discretae's own class stays
    free of scikit-learn, for ``FittedModel``.)"""


def _rank_seed(seed: int, rank: int, step: int) -> int:
    """Seed of rank > 0's own random stream (Gumbel noise, stochastic bits); rank 0 keeps
    the single-process stream."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


class DiscreteAutoencoder(
    EnsembleFit, HeadsFit, ReclusterFit, FittedCodes, TransformerMixin, ClusterMixin, BaseEstimator
):
    """A discrete autoencoder (vq, gumbel or binary) with scikit-learn conventions.

    Args:
        model: "vq" (VQ-VAE), "gumbel" (one-hot, Gumbel-softmax) or "binary".
        n_codes: codebook size K for vq and gumbel.
        n_bits: bits per code position for binary.
        latent: "global" (one code per input) or "grid" (h x w codes per image).
        grid: (h, w) for a grid latent; None picks it from the image size.
        n_clusters: clusters for ``predict``; None means n_codes for a global vq/gumbel
            latent (the code is the cluster) and 10 otherwise (k-means on codes).
        epochs, batch_size, lr: Adam training schedule. None: 30 epochs at lr 1e-3 (a
            grid latent: more on small data, up to the recipe's steps, ``grid_epochs``); with
            view objectives (the clustering recipe) lr 2e-3 and the epochs that make
            about ``RECIPE_STEPS`` steps (fewer on larger images: ``RECIPE_MAX_PIXELS``),
            at least 12 and at most 300. The recipe's
            learning rate decays to 0 along a cosine (``discretae.estimator.recipe``).
        lr_schedule: the learning-rate curve, "constant", "cosine" or "hold-cosine"
            (flat for 80% of the steps, then half a cosine); None: cosine for the recipe,
            constant otherwise.
        device: "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
        random_state: seed (int) or None; a fixed seed gives identical results on CPU.
        callback: called after every step with a dict (see ``discretae.models.training.train``).
        latent_dim: latent dimension for vq and gumbel (default 32).
        width: channels of the first conv stage.
        loss: reconstruction loss, "bce" or "mse".
        quantizer_options: extra keyword arguments of the quantizer, e.g.
            ``{"ema": False}`` for vq or ``{"groups": 2}`` for gumbel.
        objectives: what trains the code besides reconstruction, a comma list of
            "mi" (IIC mutual information between the codes of two augmented views),
            "contrastive" (InfoNCE between the views' embeddings), "critic" (the
            discriminator: image embedding against the other view's code),
            "selflabel" (SCAN's self-labelling: a view's confident code is the class
            target of the other view) and "style" (a content/style split: an 8-dim
            continuous style latent beside the code); "none" for reconstruction alone.
            "auto": ``RECIPE_OBJECTIVES`` for a gumbel model with one group and a global
            latent on images (the clustering recipe), else "none".
        objective_options: overrides of ``OBJECTIVE_DEFAULTS`` (weights, entropy_weight,
            overcluster, temperature, embed_dim, ``augment`` ranges such as
            ``{"flip": 0.5}``, ``heads``, ``embedding_kmeans``) and ``style_dim``.
        decoder: "full", "light" (the conv decoder without its full-resolution stage,
            about twice as fast to train on 32x32 colour images on the CPU;
            ``benchmarks/fit_step.py``) or "auto": light for the clustering recipe
            (``RECIPE_DECODER``), full otherwise.
        precision: what the encoder and decoder networks train in: "float32",
            "bfloat16" (autocast; the quantizer, objectives and losses stay float32) or
            "auto": bfloat16 for the clustering recipe on a CPU that computes it in
            hardware, where a step takes about half the time, else float32
            (``discretae.core.devices.training_dtype``); encoding and decoding in float32.
        ensemble: N > 1 fits N seeds and keeps their consensus, distilled into one
            model (``discretae.estimator.ensemble``; clustering models only).

    Fitted attributes: ``model_``, ``input_shape_`` ((C, H, W) or (F,)),
    ``n_features_in_``, ``code_shape_``, ``history_``, ``n_clusters_``, ``labels_``,
    ``kmeans_`` and ``cluster_centers_`` (None unless k-means is used), ``device_``,
    ``ensemble_``, ``heads_`` and ``recluster_`` (what an ensemble fit, a choice of code
    head or the embedding's clusters did, else None; ``discretae.estimator.heads``,
    ``discretae.estimator.recluster``).
    """

    def __init__(
        self,
        model: str = "gumbel",
        n_codes: int = 10,
        n_bits: int = 16,
        latent: str = "global",
        grid=None,
        n_clusters: int | None = None,
        epochs: int | None = None,
        batch_size: int = 256,
        lr: float | None = None,
        device: str = "auto",
        random_state: int | None = 0,
        callback=None,
        latent_dim: int | None = None,
        width: int = 32,
        loss: str = "bce",
        quantizer_options: dict | None = None,
        objectives: str = "auto",
        objective_options: dict | None = None,
        lr_schedule: str | None = None,
        image_size=None,
        resize: str = "pad",
        background: str = "white",
        decoder: str = "auto",
        precision: str = "auto",
        ensemble: int = 1,
    ) -> None:
        self.model = model
        self.n_codes = n_codes
        self.n_bits = n_bits
        self.latent = latent
        self.grid = grid
        self.n_clusters = n_clusters
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.device = device
        self.random_state = random_state
        self.callback = callback
        self.latent_dim = latent_dim
        self.width = width
        self.loss = loss
        self.quantizer_options = quantizer_options
        self.objectives = objectives
        self.objective_options = objective_options
        self.lr_schedule = lr_schedule
        self.image_size = image_size
        self.resize = resize
        self.background = background
        self.decoder = decoder
        self.precision = precision
        self.ensemble = ensemble

    not_fitted_error = EstimatorNotFittedError

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        # (N, F) vectors and (N, H, W) gray images; (N, H, W, C) and (N, C, H, W) too
        tags.input_tags.two_d_array = True
        tags.input_tags.three_d_array = True
        # float input lies in [0, 1] and uint8 in 0-255: never negative (scikit-learn
        # has no tag for the upper bound)
        tags.input_tags.positive_only = True
        tags.target_tags.required = False  # y is ignored
        tags.transformer_tags.preserves_dtype = []  # transform gives integer codes
        # a fixed random_state repeats a fit exactly on a CPU; on CUDA that is not promised
        name = str(self.device)
        tags.non_deterministic = name.startswith("cuda") or (
            name == "auto" and torch.cuda.is_available()
        )
        return tags

    # ---------------------------------------------------------------- fitting
    def _objective_names(self, input_shape) -> list[str]:
        recipe = recipe_applies(self.model, self.latent, self.quantizer_options, input_shape)
        return objective_names(self.objectives, recipe)

    def _schedule(self, model: torch.nn.Module, n: int) -> tuple[int, float]:
        """(epochs, lr) for ``model`` on ``n`` inputs: the given ones, or the defaults."""
        recipe = model.objectives is not None
        lr = self.lr if self.lr is not None else (RECIPE_LR if recipe else 1e-3)
        if self.epochs is not None:
            return int(self.epochs), float(lr)
        if not recipe and not model.latent_shape:  # a global code, not the recipe's
            return DEFAULT_EPOCHS, float(lr)
        steps = steps_per_epoch(n, int(self.batch_size), distributed.world_size())
        pixels = math.prod(model.input_shape[1:])  # both are on images (C, H, W)
        epochs = recipe_epochs if recipe else grid_epochs
        return epochs(steps, int(self.batch_size), pixels), float(lr)

    def training_dtype(self, model: torch.nn.Module, device) -> torch.dtype | None:
        """What ``model``'s networks train in on ``device`` (None: float32): the given
        precision, or for "auto" bfloat16 for the recipe on a CPU that has it."""
        return training_dtype(self.precision, device, recipe=model.objectives is not None)

    def spike_guarded(self, model: torch.nn.Module) -> bool:
        """Whether training undoes an epoch whose loss spiked (``train``'s spike_guard):
        for models trained on reconstruction alone, with no annealed quantizer."""
        return model.objectives is None and not model.quantizer.annealed

    def lr_schedule_used(self, model: torch.nn.Module) -> str:
        """The learning-rate curve: the given one, else ``RECIPE_LR_SCHEDULE`` for the
        recipe and constant otherwise."""
        if self.lr_schedule is not None:
            return self.lr_schedule
        return RECIPE_LR_SCHEDULE if model.objectives is not None else "constant"

    def _build(self, input_shape, data: torch.Tensor | None = None) -> torch.nn.Module:
        """The untrained model; with the training ``data``, flips by the mirror rule."""
        names = self._objective_names(input_shape)
        style_dim, objectives = objective_config(names, self.objective_options)
        if data is not None:  # mirror_: the rule's record, None where it was not used
            objectives, self.mirror_ = with_mirror_rule(objectives, data)
        return build_autoencoder(
            self.model,
            input_shape,
            style_dim=style_dim,
            objectives=objectives,
            latent=self.latent,
            n_codes=int(self.n_codes),
            n_bits=int(self.n_bits),
            latent_dim=None if self.latent_dim is None else int(self.latent_dim),
            grid=None if self.grid is None else tuple(int(g) for g in self.grid),
            width=int(self.width),
            loss=self.loss,
            quantizer_options=self.quantizer_options,
            decoder=recipe_decoder(self.decoder, objectives),
        )

    def _uses_codes_as_clusters(self) -> bool:
        m = self.model_
        return (
            m.config["kind"] in ("vq", "gumbel")
            and m.code_shape == ()
            and self.n_clusters in (None, m.config["n_codes"])
        )

    def _settings(self) -> dict:
        """The parameters that define the model and its training (no device, no callback),
        as JSON values."""
        params = self.get_params(deep=False)
        for key in ("callback", "device"):
            params.pop(key)
        for key in ("grid", "image_size"):  # JSON keeps lists, not tuples
            if params[key] is not None:
                params[key] = [int(g) for g in params[key]]
        return params

    @classmethod
    def from_checkpoint(cls, path, **overrides) -> DiscreteAutoencoder:
        """An unfitted estimator with the settings of the checkpoint at ``path``;
        ``overrides`` may set ``device`` and ``callback``. Continue the run with
        ``est.fit(X, resume=path)``."""
        unknown = set(overrides) - {"device", "callback"}
        if unknown:
            raise DiscretaeError(
                f"from_checkpoint takes only device and callback, got {sorted(unknown)}"
            )
        params = checkpoint_params(read_checkpoint(path).config)
        return cls(**params, **overrides)

    def fit(
        self, X, y=None, *, checkpoint=None, checkpoint_every: int = 0, resume=None
    ) -> DiscreteAutoencoder:
        """Train on X: (N, H, W), (N, H, W, C), (N, C, H, W) or (N, F), uint8 or float in
        [0, 1], numpy or torch. y is ignored.

        Args:
            checkpoint: a path where the training state is written (atomically) every
                ``checkpoint_every`` optimisation steps, and when SIGINT or SIGTERM
                arrives. None writes none, and a signal just interrupts.
            checkpoint_every: steps between checkpoints; 0 only on a signal.
            resume: a checkpoint to continue from. The estimator's settings must equal
                the checkpoint's (see ``from_checkpoint``) and X must be the same data.
                On a CPU a resumed run ends with the weights an uninterrupted run gets.

        Under torchrun (an initialised process group) this trains with
        DistributedDataParallel; see :mod:`discretae.models.training`.

        Raises:
            TrainingDiverged: a NaN or infinite loss; the checkpoint keeps the last good
                state.
            TrainingInterrupted: (a KeyboardInterrupt) SIGINT or SIGTERM; a checkpoint
                was written first when ``checkpoint`` is set.
        """
        ck = self._check_fit_call(checkpoint, checkpoint_every, resume)
        self._check_heads()
        if int(self.ensemble) > 1:
            return self._fit_ensemble(X, checkpoint_every, resume)
        data = self._at_working_size(as_images(X))
        fingerprint = data_fingerprint(data)
        if ck is not None:
            check_same_data(ck, fingerprint)
        device = resolve_device(self.device)
        seed = self._fit_seed(ck)
        cuda = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            state, epochs = self._start_training(data, device, seed, ck)
            config = {
                "params": self._settings(),
                "model": state.model.config,
                "input_shape": list(data.shape[1:]),
                "seed": seed,
                "data": fingerprint,
            }
            writer = CheckpointWriter(checkpoint, config, resume, None if ck is None else ck.step)
            self._train(state, data, epochs, device, writer, checkpoint_every)
        self._set_fitted(state, tuple(data.shape[1:]), device)
        self._fit_clusters(self._encode(data), seed)
        self._choose_head(data, seed)
        self._recluster(data, seed)
        return self

    def fit_memory(self, input_shape: tuple[int, ...], n_images: int) -> dict:
        """What fitting ``n_images`` images of ``input_shape`` with these settings is
        estimated to need, in bytes by part (see :mod:`discretae.models.memory`)."""
        model = self._build(tuple(int(v) for v in input_shape))
        views = 2 if model.objectives is not None else 1
        batch = min(int(self.batch_size), max(1, int(n_images)))
        return fit_bytes(model, model.input_shape, batch=batch, views=views, n_images=n_images)

    def _at_working_size(self, data: torch.Tensor) -> torch.Tensor:
        """Images brought to ``image_size`` (H, W) by the framing (aspect by ``resize``,
        margins in ``background``); flat vectors and images already at size unchanged."""
        self.framing_ = framing_from_params(self.get_params(deep=False))
        if self.image_size is None or data.ndim != 4:
            return data
        size = tuple(int(v) for v in self.image_size)
        if tuple(data.shape[-2:]) == size:
            return data
        x = data.float().div_(255.0) if data.dtype == torch.uint8 else data
        return frame_tensor(x, size, self.framing_).clamp_(0.0, 1.0)

    def _check_fit_call(self, checkpoint, checkpoint_every, resume) -> Checkpoint | None:
        """Check the parameters and fit's own arguments before any data is read; ->
        the checkpoint to resume from, read and matched to this estimator, or None."""
        check_parameters(self.get_params(deep=False))
        Integer(0)("checkpoint_every", checkpoint_every)
        if checkpoint_every and checkpoint is None:
            raise DiscretaeError("checkpoint_every needs a checkpoint path")
        ck = read_checkpoint(resume) if resume is not None else None
        if ck is not None:
            check_same_settings(self._settings(), ck)
        if checkpoint is not None:
            check_writable(checkpoint)
        return ck

    def _fit_seed(self, ck: Checkpoint | None) -> int:
        """The run's seed: the checkpoint's, else random_state, else a fresh one."""
        if ck is not None:
            return int(ck.config["seed"])
        if self.random_state is None:
            return int(np.random.SeedSequence().generate_state(1)[0] >> 1)
        return int(self.random_state)

    def _start_training(
        self, data: torch.Tensor, device: torch.device, seed: int, ck: Checkpoint | None
    ) -> tuple[TrainState, int]:
        """A new model for ``data`` on ``device`` and its training state, or the
        checkpoint's; -> (state, epochs). Draws from the torch RNG, seeded by the caller."""
        model = self._build(tuple(data.shape[1:]), data).to(device)
        epochs, lr = self._schedule(model, data.shape[0])
        state = make_train_state(model, lr=lr, seed=seed)
        if ck is not None:
            restore_train_state(ck, state)
            restore_rng(ck)
        if distributed.rank() > 0:
            torch.manual_seed(_rank_seed(seed, distributed.rank(), state.step))
            state.epoch_keys = []  # the checkpoint's keys are all ranks'; rank 0 has them
        return state, epochs

    def _train(
        self,
        state: TrainState,
        data: torch.Tensor,
        epochs: int,
        device: torch.device,
        writer: CheckpointWriter,
        checkpoint_every: int,
    ) -> None:
        """Run ``train``, with ``writer`` writing the checkpoints; a divergence names the
        last good checkpoint, if there is one."""
        state.model.low_precision = self.training_dtype(state.model, device)
        try:
            train(
                state,
                data,
                epochs=epochs,
                batch_size=int(self.batch_size),
                device=device,
                callback=self.callback,
                checkpoint=writer.callback,
                checkpoint_every=int(checkpoint_every),
                lr_schedule=self.lr_schedule_used(state.model),
                spike_guard=self.spike_guarded(state.model),
            )
        except TrainingDiverged as e:
            if writer.last_step is None:
                raise
            last = f"{str(writer.last_path)!r} (step {writer.last_step})"
            raise TrainingDiverged(f"{e}; the last good checkpoint is {last}", e.step) from None
        finally:
            state.model.low_precision = None

    def _set_fitted(self, state: TrainState, input_shape: tuple, device: torch.device) -> None:
        """The fitted attributes of the trained model, clusters aside."""
        self.model_ = state.model.eval()
        self.device_ = device
        self.input_shape_ = input_shape
        self.n_features_in_ = int(np.prod(self.input_shape_))
        self.code_shape_ = self.model_.code_shape
        self.history_ = state.history
        # set by an ensemble fit, a choice of head, the embedding's clusters
        self.ensemble_ = self.heads_ = self.recluster_ = None

    # ------------------------------------------------------------------- files
    def save(self, path) -> None:
        """Write the fitted model to one .safetensors file (atomically)."""
        self._check_fitted()
        params = {**self._settings(), "device": self.device}
        tensors = {f"model.{k}": v for k, v in self.model_.state_dict().items()}
        if self.kmeans_ is not None:
            tensors["kmeans.cluster_centers"] = self.kmeans_.cluster_centers_
        config = {
            "discretae_version": __version__,
            "params": params,
            "model": self.model_.config,
            "input_shape": list(self.input_shape_),
            "n_clusters": self.n_clusters_,
            "history": self.history_,
            **{k: getattr(self, f"{k}_") for k in FIT_RECORDS},
        }
        write_model_file(path, tensors, config)

    @classmethod
    def load(cls, path, device="auto") -> DiscreteAutoencoder:
        """Read a model written by ``save``; ``device`` says where it runs."""
        tensors, config = read_model_file(path)
        try:
            params = {**stored_params(config["params"]), "device": device}
            est = cls(**params)
        except (KeyError, TypeError, ValueError) as e:
            raise DiscretaeError(f"{str(path)!r} holds an inconsistent model: {e}") from None
        return attach_fitted(est, tensors, config, path, device)
