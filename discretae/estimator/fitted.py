"""Fitted models without scikit-learn: inference on a model file, and input checks.

:class:`FittedCodes` holds everything a fitted discrete autoencoder does once trained:
``transform``, ``predict``, ``cluster_ids``, ``inverse_transform`` and the streaming
``encode_batch``/``decode_batch``. :class:`~discretae.DiscreteAutoencoder`
adds training and scikit-learn's conventions on top; :class:`FittedModel` is the same
inference read straight from a model file, for the commands that only encode or decode
(importing scikit-learn costs about 0.7 s of a streaming encode's start-up).
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from discretae.core.devices import check_device
from discretae.core.errors import DiscretaeError, NotFittedError
from discretae.core.serialization import read_model_file
from discretae.data.framing import LEGACY_FRAMING, Framing, frame_tensor, parse_background
from discretae.models.autoencoder import build_autoencoder, earlier_model_config
from discretae.models.training import to_unit_float
from discretae.quantizers.kmeans import KMeans

# inputs per forward pass at inference
INFER_BATCH = 1024
CHANNELS = (1, 3, 4)
# what a fit records beside the model, each a dict or None, stored in the model file
# under its name and set as the attribute of that name plus "_" (heads -> heads_)
FIT_RECORDS = ("ensemble", "heads", "recluster", "mirror")


def _is_sparse(X) -> bool:
    """A scipy sparse matrix or array, or a torch sparse tensor. scipy is only asked when
    something already imported it (X cannot be scipy's otherwise): inference stays light."""
    if isinstance(X, torch.Tensor):
        return X.layout != torch.strided
    scipy_sparse = sys.modules.get("scipy.sparse")
    return scipy_sparse is not None and scipy_sparse.issparse(X)


def _to_tensor(X, what: str) -> torch.Tensor:
    if _is_sparse(X):
        raise DiscretaeError(
            f"{what} is sparse ({type(X).__name__}); sparse input is not supported, "
            f"give a dense array (e.g. {what}.toarray())"
        )
    if isinstance(X, torch.Tensor):
        if X.is_complex():
            raise DiscretaeError(f"Complex data not supported: {what} has dtype {X.dtype}")
        return X.detach().cpu()
    try:
        arr = np.asarray(X)
    except Exception as e:
        raise DiscretaeError(f"{what} must be an array, got {type(X).__name__}: {e}") from None
    if arr.dtype.kind == "c":
        raise DiscretaeError(f"Complex data not supported: {what} has dtype {arr.dtype}")
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise DiscretaeError(f"{what} must be a numeric array, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:  # torch warns on read-only memory (e.g. np.frombuffer)
        arr = arr.copy()
    return torch.from_numpy(arr)


def _check_shape(t: torch.Tensor) -> None:
    """Refuse what no layout reads: other than 2-4 dims, no samples, a zero-size axis."""
    shape = tuple(t.shape)
    if t.ndim not in (2, 3, 4):
        # scikit-learn's "Reshape your data" for 1-D input, which its checks look for
        hint = ""
        if t.ndim == 1:
            hint = "; Reshape your data: X.reshape(1, -1) for one input, X.reshape(-1, 1) "
            hint += "for one feature"
        raise DiscretaeError(
            f"X must be (N, H, W), (N, H, W, C), (N, C, H, W) or (N, F); got shape "
            f"{shape} ({t.ndim} dims){hint}"
        )
    if shape[0] == 0:
        raise DiscretaeError(f"X has no samples: shape {shape}")
    if 0 in shape[1:]:
        # scikit-learn's wording, which its estimator checks look for
        raise DiscretaeError(
            f"X has 0 feature(s) (shape={shape}) while a minimum of 1 is required."
        )


def _channels_first(t: torch.Tensor, expected: tuple[int, ...] | None) -> torch.Tensor:
    """(N, H, W), (N, H, W, C) or (N, C, H, W) -> (N, C, H, W); (N, F) as it is."""
    if t.ndim == 3:
        return t.unsqueeze(1)
    if t.ndim != 4:
        return t
    last, first = t.shape[3] in CHANNELS, t.shape[1] in CHANNELS
    if expected is not None and len(expected) == 3:
        if tuple(t.shape[1:]) == tuple(expected):
            last = False
        elif tuple(t.permute(0, 3, 1, 2).shape[1:]) == tuple(expected):
            last = True
    if last:
        return t.permute(0, 3, 1, 2)
    if not first:
        raise DiscretaeError(
            f"cannot find the channel axis of X with shape {tuple(t.shape)}: expected "
            f"1, 3 or 4 channels in the last axis (N, H, W, C) or the second (N, C, H, W)"
        )
    return t


def as_images(X, expected: tuple[int, ...] | None = None) -> torch.Tensor:
    """X: (N, H, W), (N, H, W, C), (N, C, H, W) or (N, F) -> (N, C, H, W) or (N, F).

    Keeps uint8 as uint8 (scaled by 1/255 batch by batch); floats become float32 and
    must lie in [0, 1]. A 4-D array is read channels-last when its last axis is 1, 3 or
    4, else channels-first; with ``expected`` (C, H, W) the layout that matches wins.
    """
    t = _to_tensor(X, "X")
    _check_shape(t)
    t = _channels_first(t, expected)
    if t.dtype == torch.uint8:
        return t.contiguous()
    if t.dtype == torch.bool or not t.is_floating_point():
        raise DiscretaeError(
            f"X must be uint8 (0-255) or float in [0, 1], got {t.dtype}; divide by the "
            f"maximum value to get floats in [0, 1]"
        )
    t = t.to(torch.float32).contiguous()
    if not torch.isfinite(t).all():
        raise DiscretaeError("X contains NaN or infinite values")
    lo, hi = float(t.min()), float(t.max())
    if lo < 0.0 or hi > 1.0:
        # scikit-learn's words for negative input, which its estimator checks look for
        negative = "Negative values in data: " if lo < 0.0 else ""
        raise DiscretaeError(
            f"{negative}float X must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; "
            "scale it first"
        )
    return t


def resolve_device(device) -> torch.device:
    """A device name -> torch.device: "auto" (CUDA when available), "cpu", "cuda",
    "cuda:N", or a torch.device of those. :func:`discretae.core.devices.check_device`
    validates the name."""
    name = str(device) if isinstance(device, torch.device) else device
    if not isinstance(name, str):
        raise DiscretaeError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N")
    if check_device(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class FittedCodes:
    """Inference of a fitted model: needs ``model_``, ``device_``, ``input_shape_``,
    ``code_shape_`` and ``kmeans_`` (None when codes are the clusters)."""

    # raised before fit; the estimator raises one that is scikit-learn's too
    not_fitted_error: type[NotFittedError] = NotFittedError

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise self.not_fitted_error(
                f"This {type(self).__name__} is not fitted yet; call fit first."
            )

    def _check_input(self, X) -> torch.Tensor:
        self._check_fitted()
        data = as_images(X, expected=self.input_shape_)
        shape = tuple(data.shape[1:])
        if shape == self.input_shape_:
            return data
        if self._frames_other_sizes(shape):
            x = data.float().div_(255.0) if data.dtype == torch.uint8 else data
            return frame_tensor(x, self.input_shape_[1:], self.framing_).clamp_(0.0, 1.0)
        n_features = int(np.prod(shape))
        where = f"per-sample shape {shape} (as (C, H, W) or (F,))"
        if n_features == self.n_features_in_:
            raise DiscretaeError(f"X has {where}, but this model was fitted on {self.input_shape_}")
        # scikit-learn's wording first, which its estimator checks look for
        raise DiscretaeError(
            f"X has {n_features} features, but {type(self).__name__} is expecting "
            f"{self.n_features_in_} features as input ({where}; this model was fitted on "
            f"{self.input_shape_})"
        )

    def _frames_other_sizes(self, shape: tuple[int, ...]) -> bool:
        """Images of another size are brought to the model's working size, as the CLI
        brings files, when the model was fitted with one (``image_size``) and the
        channels match."""
        size = getattr(self, "image_size", None)
        ours = self.input_shape_
        return size is not None and len(shape) == 3 and len(ours) == 3 and shape[0] == ours[0]

    def _encode(self, data: torch.Tensor) -> torch.Tensor:
        """data: (N, *input_shape_) uint8/float32 on CPU -> codes on CPU."""
        out = [
            self.model_.encode(to_unit_float(data[i : i + INFER_BATCH].to(self.device_))).cpu()
            for i in range(0, data.shape[0], INFER_BATCH)
        ]
        return torch.cat(out)

    def _code_features(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (N, *code_shape_) -> (N, features) float32 on the model's device."""
        with torch.no_grad():
            lat = self.model_.quantizer.codes_to_latent(codes.to(self.device_))
        return lat.reshape(codes.shape[0], -1).float()

    def _fit_clusters(self, codes: torch.Tensor, seed: int) -> None:
        """codes of the training inputs -> ``labels_``, ``n_clusters_``, ``kmeans_`` and
        ``cluster_centers_`` (k-means on the codes unless the code is the cluster)."""
        if self._uses_codes_as_clusters():
            self.kmeans_ = self.cluster_centers_ = None
            self.n_clusters_ = self.model_.config["n_codes"]
            self.labels_ = codes.numpy()
            return
        self.n_clusters_ = int(self.n_clusters or 10)
        km = KMeans(self.n_clusters_, n_init=4, random_state=seed)
        km.fit(self._code_features(codes))
        self.kmeans_ = km
        self.cluster_centers_ = km.cluster_centers_.cpu().numpy()
        self.labels_ = km.labels_.cpu().numpy()

    def _cluster(self, codes: torch.Tensor) -> np.ndarray:
        if self.kmeans_ is None:
            return codes.numpy().astype(np.int64)
        ids = [
            self.kmeans_.predict(self._code_features(codes[i : i + INFER_BATCH])).cpu()
            for i in range(0, codes.shape[0], INFER_BATCH)
        ]
        return torch.cat(ids).numpy()

    def transform(self, X) -> np.ndarray:
        """X -> codes: (N,) int64 for global vq/gumbel, (N, B) uint8 for global binary,
        (N, h, w) or (N, h, w, B) for grids, with a trailing groups axis for grouped
        Gumbel."""
        return self._encode(self._check_input(X)).numpy()

    def predict(self, X) -> np.ndarray:
        """X -> cluster ids (N,) int64 in [0, n_clusters_)."""
        return self._cluster(self._encode(self._check_input(X)))

    def cluster_ids(self, codes) -> np.ndarray:
        """codes (N, *code_shape_), from ``transform`` or ``encode_batch`` -> cluster ids
        (N,) int64: what ``predict`` gives for the inputs those codes came from, without
        encoding them again."""
        self._check_fitted()
        return self._cluster(self._check_codes(codes))

    def inverse_transform(self, codes) -> np.ndarray:
        """codes (N, *code_shape_) -> float32 images in [0, 1]: (N, H, W) for one channel,
        (N, H, W, C) otherwise, (N, F) for flat inputs."""
        self._check_fitted()
        c = self._check_codes(codes)
        out = torch.cat(
            [
                self.model_.decode(c[i : i + INFER_BATCH].to(self.device_)).cpu()
                for i in range(0, c.shape[0], INFER_BATCH)
            ]
        )
        if out.ndim == 4:
            out = out[:, 0] if out.shape[1] == 1 else out.permute(0, 2, 3, 1)
        return out.contiguous().numpy()

    def _check_codes(self, codes) -> torch.Tensor:
        c = _to_tensor(codes, "codes")
        expected = self.code_shape_
        if c.ndim < 1 or tuple(c.shape[1:]) != tuple(expected):
            raise DiscretaeError(
                f"codes must have shape (N, {', '.join(map(str, expected))}) for this model, "
                f"got {tuple(c.shape)}".replace(", )", ")")
            )
        if c.is_floating_point() or c.dtype == torch.bool:
            raise DiscretaeError(f"codes must be integers, got dtype {c.dtype}")
        high = 2 if self.model_.config["kind"] == "binary" else self.model_.config["n_codes"]
        if c.numel() and (int(c.min()) < 0 or int(c.max()) >= high):
            raise DiscretaeError(
                f"codes must lie in [0, {high - 1}], got values in [{int(c.min())}, {int(c.max())}]"
            )
        return c.to(self.model_.code_dtype)

    # --------------------------------------------------------------- streaming
    def encode_batch(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) or (B, F) float in [0, 1], any device -> codes (B, *code_shape_)
        on x's device. No validation: for streaming large collections."""
        self._check_fitted()
        return self.model_.encode(x.to(self.device_, torch.float32)).to(x.device)

    def decode_batch(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: (B, *code_shape_) -> (B, C, H, W) or (B, F) float in [0, 1] on codes'
        device. No validation."""
        self._check_fitted()
        return self.model_.decode(codes.to(self.device_)).to(codes.device)


# parameters added after model files were first written: what files from before did
# (the framing settings are read by framing_from_params and LEGACY_PARAMS)
EARLIER_DEFAULTS = {"decoder": "full", "precision": "float32"}


def stored_params(params: dict) -> dict:
    """A model file's or checkpoint's parameters, with what files written before a
    parameter existed did."""
    return {**EARLIER_DEFAULTS, **params}


def framing_from_params(params: dict) -> Framing:
    """How the model's images are framed: from its ``resize`` and ``background``, or the
    legacy stretch (alpha dropped) for a model file written before they existed."""
    if "resize" not in params:
        return LEGACY_FRAMING
    return Framing(resize=params["resize"], background=parse_background(params["background"]))


def attach_fitted(obj, tensors: dict, config: dict, path, device):
    """Set ``obj``'s fitted attributes from a model file's tensors and config."""
    try:
        model = build_autoencoder(**earlier_model_config(config["model"]))
        state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        model.load_state_dict(state, strict=True)
        input_shape = tuple(int(s) for s in config["input_shape"])
        n_clusters = int(config["n_clusters"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise DiscretaeError(f"{str(path)!r} holds an inconsistent model: {e}") from None
    obj.device_ = resolve_device(device)
    obj.framing_ = framing_from_params(config.get("params") or {})
    obj.model_ = model.to(obj.device_).eval()
    obj.input_shape_ = input_shape
    obj.n_features_in_ = int(np.prod(input_shape))
    obj.code_shape_ = model.code_shape
    obj.history_ = list(config.get("history", []))
    for key in FIT_RECORDS:  # None in files written before the record existed
        setattr(obj, f"{key}_", config.get(key))
    obj.n_clusters_ = n_clusters
    centers = tensors.get("kmeans.cluster_centers")
    if centers is None:
        obj.kmeans_ = obj.cluster_centers_ = None
    else:
        obj.kmeans_ = KMeans.from_centers(centers.to(obj.device_))
        obj.cluster_centers_ = centers.numpy()
    return obj


class FittedModel(FittedCodes):
    """A model file's fitted model for inference only: the estimator's parameters are
    attributes (``model``, ``n_codes``, ...) as on the estimator, and ``get_params``
    returns them, but there is no ``fit``."""

    def __init__(self, params: dict):
        self._params = dict(params)
        for key, value in self._params.items():
            setattr(self, key, value)

    def get_params(self, deep: bool = False) -> dict:
        return dict(self._params)

    @classmethod
    def load(cls, path, device="auto") -> FittedModel:
        """Read a model written by ``DiscreteAutoencoder.save``."""
        tensors, config = read_model_file(path)
        params = config.get("params")
        if not isinstance(params, dict):
            raise DiscretaeError(f"{str(path)!r} holds an inconsistent model: no parameters")
        params = {**stored_params(params), "device": device}
        return attach_fitted(cls(params), tensors, config, path, device)
