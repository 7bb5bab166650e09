"""Query-vector arithmetic of the published training-free CIR methods. Rows are float32 embeddings.

Each function follows one paper (or its official code, where the paper leaves a detail open); where a
detail could not be checked against a primary source the docstring says so. Every function accepts one
vector ``(d,)`` or a batch ``(n, d)`` and works along the last axis.
"""

from __future__ import annotations

import numpy as np


def normalise(vectors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """L2-normalise along the last axis (a zero vector stays zero instead of becoming NaN)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, eps)


def _check_weight(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def mean_embedding(rows: np.ndarray) -> np.ndarray:
    """Ensemble of several embeddings: the normalised mean of the normalised rows (CIReVL-style)."""
    rows = normalise(np.atleast_2d(rows))
    return normalise(rows.mean(axis=0))


def mean_score_query(rows: np.ndarray) -> np.ndarray:
    """A query whose inner product with any gallery vector v is the MEAN of the rows' cosine scores with v.

    ImageScope (official code, utils/inference_entrypoint_ray.py:541-571) scores every target description
    separately against the gallery and divides the summed similarities by the number of descriptions. As
    scoring is an inner product, mean_d <t_d, v> = <mean_d t_d, v>: the mean of the unit rows, NOT
    renormalised, gives exactly those averaged scores in a single search.
    """
    return normalise(np.atleast_2d(rows)).mean(axis=0)


def weighted_fusion(image: np.ndarray, text: np.ndarray, alpha: float) -> np.ndarray:
    """q = normalise((1 - alpha) * img/|img| + alpha * txt/|txt|): fusion of unit embeddings (our ``fusion`` mode)."""
    _check_weight("alpha", alpha)
    return normalise((1.0 - alpha) * normalise(image) + alpha * normalise(text))


def weimocir_query(image: np.ndarray, text: np.ndarray, alpha: float) -> np.ndarray:
    """WeiMoCIR weighted modality fusion: q = normalise((1 - alpha) * image + alpha * text).

    The inputs are used as given: the official code fuses the RAW (unnormalised) CLIP projections
    (src/utils.py:274-282 ``element_wise_sum_with_alpha``; features from src/utils.py:120 and
    src/validate_clip.py:577, normalised only after fusion, validate_clip.py:590). Pass unit vectors only
    when raw projections are not available (the retrieve stage records which it used). The same function
    builds the image-branch query (image = reference image) and each caption-branch query
    (image = the reference's j-th caption embedding), as the official code calls one combining function
    for both (validate_clip.py:107-138).
    """
    _check_weight("alpha", alpha)
    return normalise((1.0 - alpha) * np.asarray(image, dtype=np.float32) + alpha * np.asarray(text, dtype=np.float32))


def pdv_direction(reference_text: np.ndarray, composed_text: np.ndarray) -> np.ndarray:
    """PDV's prompt directional vector: delta = txt(composed) - txt(reference caption), of unit embeddings.

    Tursun et al. (WACV 2026, arXiv 2502.07215); official pseudo-code ``calculate_pdv_features`` in the
    neouyghur/PDV README (commit c05bb1d, lines 45-51): the three inputs are L2-normalised, then the
    difference is taken.
    """
    return normalise(composed_text) - normalise(reference_text)


def pdv_text(reference_text: np.ndarray, composed_text: np.ndarray, alpha_t: float) -> np.ndarray:
    """PDV-T = txt(reference caption) + alpha_T * delta (official README line 59); NOT normalised here:
    only the fused PDV-F is (line 66). alpha_T = 1 gives txt(composed) back."""
    return normalise(reference_text) + alpha_t * pdv_direction(reference_text, composed_text)


def pdv_image(
    reference_image: np.ndarray, reference_text: np.ndarray, composed_text: np.ndarray, alpha_i: float
) -> np.ndarray:
    """PDV-I = img(reference) + alpha_I * delta (official README line 55): the prompt's direction moved onto
    the image embedding; NOT normalised here."""
    return normalise(reference_image) + alpha_i * pdv_direction(reference_text, composed_text)


def pdv_fused(
    reference_image: np.ndarray,
    reference_text: np.ndarray,
    composed_text: np.ndarray,
    alpha_t: float,
    alpha_i: float,
    beta: float,
) -> np.ndarray:
    """PDV-F = normalise((1 - beta) * PDV-I + beta * PDV-T) (official README lines 61-66: "higher beta
    values emphasize text features"). beta = 1 is PDV-T alone, beta = 0 PDV-I alone; the official default
    is alpha_I = alpha_T = beta = 1."""
    _check_weight("beta", beta)
    q_text = pdv_text(reference_text, composed_text, alpha_t)
    q_image = pdv_image(reference_image, reference_text, composed_text, alpha_i)
    return normalise((1.0 - beta) * q_image + beta * q_text)


def sqaf_query(
    image: np.ndarray, modification_text: np.ndarray, target_caption: np.ndarray, alpha: float, weight: float
) -> np.ndarray:
    """SQUARE's Semantic Query-Augmented Fusion (Wu, Lin, Yang 2025, arXiv 2509.26330, stage 1 / Fig. 1).

    The paper: the composed query, "formed by fusing the embeddings of the reference image and modification
    text from a VLM", is enriched with the MLLM-generated target caption. Here:
        q_c = normalise((1 - alpha) * img + alpha * txt(modification))   (composed query, WeiMoCIR-style)
        q   = normalise((1 - weight) * q_c + weight * txt(target caption))
    on unit embeddings. Not verified: the exact enrichment formula and its weights (only the abstract and
    overview figure caption could be read here; no official code was found).
    """
    _check_weight("alpha", alpha)
    _check_weight("weight", weight)
    composed = weighted_fusion(image, modification_text, alpha)
    return normalise((1.0 - weight) * composed + weight * normalise(target_caption))
