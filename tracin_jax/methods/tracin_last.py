"""Last-layer methods from stored classifier features: tracin_last, representer, influence_last.

For a linear classifier ``logits = a W + b`` (a = the classifier input, stored as
``features [H]``; ``p − y`` stored as ``p_minus_y [C]``) the per-example kernel
gradient is ``∂ℓ/∂W = a (p − y)ᵀ``, so last-layer scores never need more than the
store. The bias is excluded (docs/method.md, ``tracin_last``).
"""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from tracin_jax.kernels import gram
from tracin_jax.methods.base import ArrayMethod, MethodError

log = logging.getLogger(__name__)

_PRECISION = jax.lax.Precision.HIGHEST
# Damping of influence_last: (H + λI) must be invertible, and the softmax Hessian is
# singular along the all-ones class direction (logits are shift-invariant).
DEFAULT_DAMPING = 1e-2
# Representer points: the L2 strength λ of the last layer (Yeh et al. 2018, eq. 1).
# It only scales every score by the same positive factor; rankings do not depend on it.
DEFAULT_REPRESENTER_L2 = 1e-3


class TracInLast(ArrayMethod):
    """``tracin_last``: ``Σ_c η_c ⟨a(x), a(x')⟩ ⟨p−y, p'−y'⟩``.

    This is ``Σ_c η_c ⟨∂ℓ(x)/∂W_c, ∂ℓ(x')/∂W_c⟩`` for the classifier kernel W (bias
    excluded), computed in factored form without materialising the ``[H, C]``
    gradients. A step ``W ← W − η ∂ℓ(x)/∂W`` changes ℓ(x') by ``−η ·`` this, so
    score > 0 = proponent, as for every TracIn score.
    """

    name = "tracin_last"
    fields = ("features", "p_minus_y")

    def inputs(self, block, step, side):
        return {"features": np.asarray(block["features"], np.float32),
                "p_minus_y": np.asarray(block["p_minus_y"], np.float32)}

    def kernel(self, test, train):
        return gram(test["features"], train["features"]) * gram(test["p_minus_y"], train["p_minus_y"])


class Representer(ArrayMethod):
    """``representer``: representer point selection at the final checkpoint (eq. 1, docs/method.md).

    ``score(x, x') = −1/(2λn) · ∂ℓ(x)/∂f_j(x) · a(x)ᵀa(x')`` with ``j`` the
    ground-truth class of x' and n the number of training examples. ``∂ℓ/∂f_j =
    (p − y)_j``: a training example of class j (``(p−y)_j = p_j − 1 ≤ 0``) with
    features aligned to x' pushes x''s class-j logit up, a positive score —
    proponent. Options: ``l2`` (λ; a positive scale only).
    """

    name = "representer"
    fields = ("features", "p_minus_y")
    final_checkpoint_only = True

    def __init__(self, l2: float = DEFAULT_REPRESENTER_L2):
        if not float(l2) > 0:
            raise ValueError(f"representer: l2 must be > 0, got {l2!r}")
        self.l2 = float(l2)
        self.num_train: int | None = None

    def _bind(self, test_store, train_store, context):
        super()._bind(test_store, train_store, context)
        self.num_train = train_store.num_examples

    def inputs(self, block, step, side):
        if side == "test":
            return {"features": np.asarray(block["features"], np.float32),
                    "label": np.asarray(block["label"], np.int32)}
        if self.num_train is None:
            raise MethodError("representer: prepare it for the stores first (method.prepare(test_store, train_store)) (it reads the training-set size)")
        alpha = -np.asarray(block["p_minus_y"], np.float64) / (2.0 * self.l2 * self.num_train)
        return {"features": np.asarray(block["features"], np.float32),
                "alpha": alpha.astype(np.float32)}  # [N, C]: α_{x,j} = −(p−y)_j / (2λn)

    def kernel(self, test, train):
        alpha = jnp.take(train["alpha"], test["label"], axis=1).T  # [M, N]: α_{x, j(x')}
        return alpha * gram(test["features"], train["features"])

    def describe(self):
        return {"name": self.name, "l2": self.l2}


def classifier_gradients(features: np.ndarray, p_minus_y: np.ndarray) -> np.ndarray:
    """Flattened kernel gradients ``vec(a (p−y)ᵀ)``: [N, H], [N, C] -> [N, H·C] (index h·C + c)."""
    return (features[:, :, None] * p_minus_y[:, None, :]).reshape(len(features), -1)


def classifier_hessian(train_store, step: int) -> np.ndarray:
    """Mean training Hessian of ℓ w.r.t. the classifier kernel: ``[H·C, H·C]`` float64.

    For ``ℓ = CE(softmax(a W + b), y)``, ``∂²ℓ/∂W² = (a aᵀ) ⊗ (diag p − p pᵀ)`` exactly
    (index h·C + c, as ``np.kron``), averaged over the store's examples, one shard
    at a time; p = (p − y) + onehot(y).
    """
    total, count = None, 0
    for shard in train_store.iter_shards(step, fields=("features", "p_minus_y", "label")):
        a = jnp.asarray(shard["features"], jnp.float32)
        pmy = np.asarray(shard["p_minus_y"], np.float32)
        p = pmy + np.eye(pmy.shape[1], dtype=np.float32)[shard["label"]]
        n, h = a.shape
        c = p.shape[1]
        # Σ_n a_h a_h' p_c δ_cc'  and  Σ_n (a_h p_c)(a_h' p_c')
        diag = jnp.einsum("nh,ni,nc->hic", a, a, p, precision=_PRECISION)
        x = (a[:, :, None] * p[:, None, :]).reshape(n, h * c)
        outer = jnp.einsum("ni,nj->ij", x, x, precision=_PRECISION)
        block = -np.asarray(outer, np.float64).reshape(h, c, h, c)
        idx = np.arange(c)
        block[:, idx, :, idx] += np.moveaxis(np.asarray(diag, np.float64), 2, 0)
        total = block if total is None else total + block
        count += n
    return (total / count).reshape(h * c, h * c)


class InfluenceLast(ArrayMethod):
    """``influence_last``: ``∇ℓ(x)ᵀ (H + λI)⁻¹ ∇ℓ(x')`` over the classifier kernel, final checkpoint.

    H is the mean training Hessian (``classifier_hessian``), λ = ``damping``.
    Sign: influence functions (Koh & Liang 2017) define ``I(x, x') =
    −∇ℓ(x')ᵀ H⁻¹ ∇ℓ(x)``, the change of ℓ(x') per unit up-weighting of x. We
    report its negative, so that score > 0 means up-weighting x lowers ℓ(x'):
    a proponent, as docs/method.md requires. Computed as ``aᵀ V' (p−y)`` with the test side
    pre-solved, ``V' = (H + λI)⁻¹ ∇ℓ(x')`` reshaped ``[H, C]``.
    """

    name = "influence_last"
    fields = ("features", "p_minus_y")
    final_checkpoint_only = True

    def __init__(self, damping: float = DEFAULT_DAMPING):
        if not float(damping) > 0:
            raise ValueError(f"influence_last: damping must be > 0, got {damping!r}")
        self.damping = float(damping)
        self.hessian: np.ndarray | None = None
        self._factor = None
        self._step: int | None = None

    def _bind(self, test_store, train_store, context):
        super()._bind(test_store, train_store, context)
        step = self.checkpoint_weights(test_store, train_store)[0].step
        key = (str(train_store.directory), step)
        if self._step != key:
            self.hessian = classifier_hessian(train_store, step)
            damped = self.hessian + self.damping * np.eye(len(self.hessian))
            try:
                self._factor = scipy.linalg.cho_factor(damped)
            except np.linalg.LinAlgError as e:
                raise MethodError(
                    f"influence_last: H + {self.damping}·I is not positive definite ({e}); the store's "
                    "p_minus_y must be softmax probabilities minus one-hot labels, or raise damping"
                ) from e
            self._step = key
            log.info("influence_last: Hessian %s at step %d, damping %g, eigenvalues [%.3g, %.3g]",
                     self.hessian.shape, step, self.damping, *np.linalg.eigvalsh(self.hessian)[[0, -1]])

    def inputs(self, block, step, side):
        features = np.asarray(block["features"], np.float32)
        p_minus_y = np.asarray(block["p_minus_y"], np.float32)
        if side == "train":
            return {"features": features, "p_minus_y": p_minus_y}
        if self._factor is None:
            raise MethodError("influence_last: prepare it for the stores first (method.prepare(test_store, train_store)) (it builds the Hessian)")
        g = classifier_gradients(features.astype(np.float64), p_minus_y.astype(np.float64))
        solved = scipy.linalg.cho_solve(self._factor, g.T).T  # [M, H*C]
        return {"solved": solved.reshape(len(g), features.shape[1], -1).astype(np.float32)}

    def kernel(self, test, train):
        return jnp.einsum("mhc,nh,nc->mn", test["solved"], train["features"], train["p_minus_y"],
                          precision=_PRECISION)

    def describe(self):
        return {"name": self.name, "damping": self.damping}
